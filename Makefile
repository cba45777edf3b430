# SPG99 — the whole set-up is `make up` (start a local platform) and `make test` (run the tests).
SHELL := /bin/bash
BIN := node_modules/.bin
NODE_OPTIONS ?= --enable-source-maps
export NODE_OPTIONS

.PHONY: help install system-deps test-deps gen gen-check lint build test test-e2e test-all test-unit test-integration sim up down status bench bench-wal bench-pageserver bench-gateway clean

help: ## Lists the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.installed ## Installs npm packages (and hydrates the Postgres binaries' library links)

system-deps: ## Installs missing Debian packages (psql, pgbench, redis-server) and the user Postgres runs as
	@bash scripts/system-deps.sh

test-deps: ## system-deps and what only the tests need (chromium for the console's browser test)
	@bash scripts/system-deps.sh --test

gen: install ## Regenerates gen/ from proto/ (buf + ts-proto)
	$(BIN)/buf generate

gen-check: gen ## Fails when gen/ is not what proto/ generates
	@git diff --exit-code --stat -- gen || { echo "gen/ is stale: run 'make gen' and commit the result" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- gen)" || { git status --porcelain -- gen; echo "gen/ has untracked generated files: run 'make gen' and commit" >&2; exit 1; }

lint: install ## buf lint, buf breaking against main (when it has contracts), TypeScript checks
	$(BIN)/buf lint
	@if git rev-parse --verify --quiet main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		echo "buf breaking against main"; $(BIN)/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no previous contracts on main yet"; fi
	$(BIN)/tsc -p tsconfig.json --noEmit
	$(BIN)/tsc -p src/console/web/tsconfig.json --noEmit

build: install ## Compiles TypeScript to dist/, with the descriptor set server reflection serves
	@rm -rf dist
	$(BIN)/tsc -p tsconfig.json
	$(BIN)/tsc -p src/console/web/tsconfig.json && cp src/console/web/console.css dist/console-web/
	$(BIN)/buf build -o dist/descriptor.binpb

test: test-deps lint build ## Runs the tests: unit, simulation, integration with real Postgres and safekeepers (two files at a time; SPG99_TEST_JOBS=1: one)
	SPG99_TEST_SUITE=core $(BIN)/mocha

test-e2e: test-deps build ## Runs the whole-platform tests (make up as written, chaos, the SDK's packed tarball, the console in Chromium)
	SPG99_TEST_SUITE=e2e $(BIN)/mocha

test-all: test test-e2e ## make test, then make test-e2e (what CI runs)

test-unit: build ## Runs only the unit tests
	$(BIN)/mocha --no-config --timeout 120000 --exit 'dist/test/unit/**/*.test.js'

test-integration: build ## Runs only the integration tests
	$(BIN)/mocha --no-config --timeout 120000 --exit 'dist/test/integration/**/*.test.js'

sim: build ## The consensus simulation over many seeds (SPG99_SIM_SEEDS, default 20000); SPG99_SIM_SEED=N replays one seed with its trace
	SPG99_SIM_SEEDS=$${SPG99_SIM_SEEDS:-20000} $(BIN)/mocha --no-config --timeout 0 --exit dist/test/sim/consensus-sim.test.js

up: system-deps build ## Starts the platform (Redis, safekeepers, pageserver, provisioner, control plane, gateway) in .spg99/ and prints how to connect
	node dist/scripts/local-cluster.js up

down: ## Stops what `make up` started
	@if [ -f dist/scripts/local-cluster.js ]; then node dist/scripts/local-cluster.js down; else echo "nothing to stop"; fi

status: ## Shows what `make up` runs
	node dist/scripts/local-cluster.js status

bench: build ## Runs every benchmark, one after another, and prints a table of their last lines
	node dist/bench/all.js

bench-wal: build ## pgbench through the walproposer and three safekeepers vs. plain Postgres
	node dist/bench/wal-quorum.js

bench-pageserver: build ## GetPage@LSN vs pread, basebackup FULL vs THIN, new-compute start (pgbench scale 50)
	node dist/bench/pageserver.js

bench-gateway: build ## pgbench -S through the gateway vs PgBouncer (installs it) and direct, with and without TLS; cold starts
	node dist/bench/gateway.js

clean: ## Removes build output and local cluster data
	rm -rf dist .spg99
