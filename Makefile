# dpo-service: common tasks. `make setup && make toy-trigger` runs the main job end to end;
# `make test` runs the tests. Variables can be overridden: `make api PORT=9000`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DPO        ?= npx dpo
REDIS_HOST ?= 127.0.0.1
REDIS_PORT ?= 6379
COMPOSE    ?= docker compose

.PHONY: help setup redis toy-data toy-train api worker toy-trigger test test-api lint format clean bench typecheck \
        docker-build docker-build-gpu docker-run docker-run-gpu docker-clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: ## install dependencies (npm ci) and start Redis if it is not running
	npm ci --no-fund --no-audit
	@$(MAKE) --no-print-directory redis

redis: ## start a local throwaway Redis on 127.0.0.1:6379 unless one answers
	@if redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  echo "redis: up on $(REDIS_HOST):$(REDIS_PORT)"; \
	elif command -v redis-server >/dev/null; then \
	  redis-server --daemonize yes --bind 127.0.0.1 --port $(REDIS_PORT) --save "" --appendonly no && \
	  for i in $$(seq 1 50); do redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	  echo "redis: started on 127.0.0.1:$(REDIS_PORT)"; \
	else \
	  echo "redis-server is not installed: sudo apt-get install -y redis-server (or set REDIS_URL)" >&2; exit 1; \
	fi

toy-data: ## write the small toy preference dataset
	npx tsx tools/make-toy-data.ts

toy-train: ## SFT then DPO on the toy data with the default config (no Redis, no API)
	$(DPO) train

api: ## run the API (PORT 8000; see docs/service.md for the environment)
	$(DPO) serve

worker: ## run a training worker
	$(DPO) worker

toy-trigger: ## start api + worker if needed, post the toy data, follow the job, print the artifact location
	npx tsx tools/toy-trigger.ts

test: ## run every test (needs Redis: make redis)
	npm test

test-api: ## the API's unit and integration tests only (needs Redis)
	npm run test:api

lint: ## Biome: lint + format check (what CI runs)
	npm run lint

format: ## Biome: rewrite files in the repo's format
	npm run format

typecheck: ## tsc --noEmit
	npm run typecheck

clean: ## remove build output, local artifacts, runs and the native kernel cache
	rm -rf dist artifacts runs output "$${DPO_NATIVE_CACHE:-$${TMPDIR:-/tmp}/dpo-native}"

bench: ## the DPO step benchmark
	npm run bench

docker-build: ## build the api and worker images (Dockerfile)
	$(COMPOSE) build

docker-build-gpu: ## build the GPU worker image too (Dockerfile.gpu; see docs/deploy.md)
	$(COMPOSE) --profile gpu build

docker-run: ## start redis, api and worker with docker compose (reads .env)
	$(COMPOSE) up -d
	@echo "API on http://localhost:$${PORT:-8000} (docs at /docs); logs: $(COMPOSE) logs -f"

docker-run-gpu: ## also start the GPU worker (compose profile gpu)
	$(COMPOSE) --profile gpu up -d

docker-clean: ## stop the stack and remove its containers, volumes and locally built images
	$(COMPOSE) --profile gpu down --volumes --remove-orphans --rmi local
