# syntax=docker/dockerfile:1.7
#
# The service's CPU images: `api` (dpo serve) and `worker` (dpo worker, trains on the tfjs wasm backend).
#   docker build --target api    -t dpo-service-api .
#   docker build --target worker -t dpo-service-worker .
# The GPU worker is Dockerfile.gpu. docs/deploy.md walks through the whole deployment.
#
# The project runs its TypeScript sources through tsx (as `npm run dpo` does), so no compile step
# ships; the build stage installs the lockfile exactly as .ci/run does and type-checks the sources.
# tsx is a runtime dependency, so `npm ci --omit=dev` installs it.
# No secrets are built in: credentials are mounted at run time (docker-compose.yml, ./secrets).

ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: the full install CI proves, plus a type check -------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-fund --no-audit
COPY tsconfig.json ./
COPY src ./src
COPY tools ./tools
# TYPECHECK=false skips `tsc --noEmit` (e.g. to build an image from a work-in-progress tree).
ARG TYPECHECK=true
RUN if [ "$TYPECHECK" = "true" ]; then npx tsc --noEmit -p tsconfig.json; fi

# ---- deps: production dependencies only, from the same lockfile ---------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --no-fund --no-audit

# ---- runtime: what both services share -----------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
ENV NODE_ENV=production \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    HOST=0.0.0.0 \
    PORT=8000 \
    STORAGE_DIR=/app/artifacts \
    TFJS_BACKEND=auto
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY config ./config
COPY schemas ./schemas
COPY models ./models
COPY tools ./tools
# Sources stay root-owned and read-only to the service user; only the artifact tree is writable.
RUN mkdir -p /app/artifacts && chown node:node /app/artifacts
USER node
VOLUME ["/app/artifacts"]

# ---- api: POST /trigger-finetune, GET /jobs/:id, /health, /docs, /metrics -------------------------
FROM runtime AS api
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8000)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# The same process as `dpo serve` (src/api/server.ts is its entry; configured by the environment).
CMD ["node", "--import", "tsx", "src/api/server.ts"]

# ---- worker: trains queued jobs (SFT then DPO) and stores the artifact ----------------------------
FROM runtime AS worker
# A C compiler lets the engine build its native SGEMM/AdamW kernels on first use (src/training/engine/native.ts,
# `cc -O3 -march=native` for the CPU the worker runs on; ~3x faster training). Without it the worker falls back
# to tfjs-wasm's XNNPACK kernels. The official Node images already ship Node's headers.
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV DPO_NATIVE_CACHE=/tmp/dpo-native
USER node
# Bundle tfjs-core's gradient tree into the cache now (CPU-independent, ~0.2 s), so the first job does not;
# the native kernels still compile on first use, for the CPU the worker actually runs on.
RUN node --import tsx -e "await (await import('./src/training/engine/gradients.ts')).ensureGradients()" \
 && ls /tmp/dpo-native/tfjs-core-*-gradients-*.mjs
# Liveness: when something listens on WORKER_METRICS_PORT (default 9464), GET /metrics must answer 2xx;
# otherwise (port 0 or nothing listening) a process check that the container's main process is the worker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "const pc=()=>process.exit(require('fs').readFileSync('/proc/1/cmdline','utf8').includes('worker')?0:1);const p=process.env.WORKER_METRICS_PORT??'9464';if(p==='0'){pc()}else{fetch('http://127.0.0.1:'+p+'/metrics').then(r=>process.exit(r.ok?0:1),pc)}"]
# The same process as `dpo worker` (src/worker/main.ts is its entry; configured by the environment).
CMD ["node", "--import", "tsx", "src/worker/main.ts"]
