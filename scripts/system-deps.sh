#!/usr/bin/env bash
# Installs the Debian packages SPG99 needs when they are missing: psql and pgbench (clients; the Postgres servers
# come from npm) and redis-server (the control plane's catalog); with --test also chromium (the console's browser
# test, driven by playwright-core, which downloads no browser). Used by `make up`, `make test` (--test) and
# `.ci/run`. As root it also
# creates the unprivileged user Postgres runs as (Postgres refuses to run as root; see src/lib/pg/os-user.ts).
set -euo pipefail

need=()
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-client)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Only the tests need a browser: `make up` does not install one.
if [ "${1:-}" = --test ]; then command -v chromium >/dev/null 2>&1 || need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]}; install them (apt-get install ${need[*]}) as root" >&2
    exit 1
  fi
fi

if [ "$(id -u)" = 0 ] && ! id spg99 >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin spg99
fi
