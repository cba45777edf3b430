# syntax=docker/dockerfile:1
# The compute image of the `kubernetes` provisioner driver (docs/kubernetes.md): Node 20, the built dist/ and the
# Postgres binaries of @embedded-postgres, run as the non-root user `spg99` (uid/gid 10001, which the driver's pods
# set as runAsUser/fsGroup). The provisioner can run from the same image (node /app/dist/cmd/provisioner.js).
#
#   docker build -f deploy/compute.Dockerfile -t registry.example.com/spg99/compute:<version> .
#
# Not built or run by the tests: check it against your cluster before relying on it.

FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# npm ci runs the postinstall, which recreates the library links of the Postgres binaries.
COPY scripts/hydrate-postgres.mjs scripts/
RUN npm ci --no-audit --no-fund
COPY . .
# What `make build` does, without deleting anything: dist/ and the descriptor set that server reflection serves.
RUN npx tsc -p tsconfig.json \
 && npx buf build -o dist/descriptor.binpb \
 && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
# The fixed uid is what the pods' securityContext names; Postgres refuses to run as root anyway.
RUN groupadd --system --gid 10001 spg99 \
 && useradd --system --uid 10001 --gid spg99 --home-dir /var/lib/spg99 --shell /usr/sbin/nologin spg99 \
 && mkdir -p /var/lib/spg99 \
 && chown spg99:spg99 /var/lib/spg99
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
USER 10001:10001
ENV NODE_ENV=production
# Postgres, the agent's ComputeService, its metrics (the driver's default ports).
EXPOSE 5432 7900 9187
# The driver sets the command (node --enable-source-maps /app/dist/cmd/agent.js ...); alone, the image explains itself.
CMD ["node", "/app/dist/cmd/agent.js", "--help"]
