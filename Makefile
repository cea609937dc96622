# zerofn: the one entry point. CI runs `make test` (through .ci/run) and nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
CARGO_TARGET_DIR_OR_DEFAULT := $(or $(CARGO_TARGET_DIR),target)
export ZEROFN_BIN := $(abspath $(CARGO_TARGET_DIR_OR_DEFAULT))/debug/zerofn
need-fn = $(if $(fn),,$(error fn=NAME is required, e.g. make $@ fn=notify))

.PHONY: help run demo status build new test test-fast test-deploy test-image test-new services-up services-down bench profile lint fmt doc clean values render image deploy rollback deploy-platform

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## Build the functions and start the local engine: gateway on 127.0.0.1:8080, functions scaled 0..N, the dashboard at /_zerofn/dashboard
	$(CARGO) build --locked --bins --workspace --exclude zerofn-tests
	ZEROFN_LOG_FORMAT=$${ZEROFN_LOG_FORMAT:-compact} $(CARGO_TARGET_DIR_OR_DEFAULT)/debug/zerofn dev $(ARGS)

demo: ## The finance companion with a month of data for three users: loads it through the gateway, prints what each user was told
	$(CARGO) build --locked --bins --workspace --exclude zerofn-tests
	@scripts/demo.sh

status: ## What the running engine is doing: replicas, lag, processed, retries, dead letters
	@$(CARGO_TARGET_DIR_OR_DEFAULT)/debug/zerofn status $(ARGS)

build: ## Build every crate (runtime, functions, test harness)
	$(CARGO) build --workspace --all-targets --locked

test: lint test-fast test-deploy test-image test-new ## Lint, then every test: unit, doc, contracts, transports, processes, the engine, charts, image, scaffolding

test-fast: ## Run every test without the lint step (starts PostgreSQL and Redis on 127.0.0.1)
	@set -e; env_file=$$(scripts/test-services.sh up); \
	trap 'scripts/test-services.sh down' EXIT; \
	. "$$env_file"; \
	$(CARGO) build --workspace --bins --locked; \
	$(CARGO) test --workspace --locked; \
	$(CARGO) test -p categorize --features lambda --locked --test lambda

test-deploy: ## Render every chart with real Helm (no cluster) and validate: schemas, policies, golden values, deploy without a cluster; every YAML file parses, workflows match GitHub's schema
	$(CARGO) build --locked -p zerofn-cli
	@venv=$$(scripts/deploy/venv.sh) && $$venv/bin/python scripts/deploy/test_charts.py
	@scripts/check_yaml.sh

test-new: ## make new end to end: each kind's crate builds, passes its own tests, renders as a chart and runs in the engine
	$(CARGO) build --locked -p zerofn-cli
	scripts/test_new.sh

test-image: ## Build notify's image and the gateway's (podman/buildah, installed if missing), run each, expect /healthz 200
	scripts/deploy/test_image.sh notify
	scripts/deploy/test_image.sh gateway

new: ## A new function crate, fn=NAME [kind=event|http]: it builds, passes its tests and runs in `make run` at once
	$(need-fn)
	@$(CARGO) build --locked -q -p zerofn-cli >&2
	@$(ZEROFN_BIN) new $(fn) --kind $(or $(kind),event)
	@$(CARGO) update --workspace --offline -q   # the new crate joins Cargo.lock; no dependency moves

values: ## Helm values generated from functions/$(fn)/function.toml (fn=NAME)
	$(need-fn)
	@$(CARGO) build --locked -q -p zerofn-cli >&2
	@$(ZEROFN_BIN) values functions/$(fn)

render: ## The fully rendered manifests of fn=NAME (or fn=platform) on stdout, no cluster needed
	$(need-fn)
	@$(CARGO) build --locked -q -p zerofn-cli >&2
	@scripts/deploy/render.sh $(fn)

image: ## Build fn=NAME's image (fn=gateway: the zerofn gateway's): static binary on scratch (REGISTRY, TAG = git short sha); prints its size
	$(need-fn)
	@scripts/deploy/image.sh $(fn)

deploy: ## Image build + push + helm upgrade --install --atomic --wait of fn=NAME (NAMESPACE, REGISTRY, TAG, VALUES)
	$(need-fn)
	@$(CARGO) build --locked -q -p zerofn-cli >&2
	@scripts/deploy/deploy.sh deploy $(fn)

rollback: ## helm rollback of fn=NAME to its previous release
	$(need-fn)
	@scripts/deploy/deploy.sh rollback $(fn)

deploy-platform: ## helm upgrade --install --atomic --wait of the platform chart (gateway, Dapr components, topics, dashboard); GATEWAY_CONFIG=FILE: who may call the gateway
	@$(CARGO) build --locked -q -p zerofn-cli >&2
	@scripts/deploy/deploy.sh deploy-platform

services-up: ## Start the test PostgreSQL, Redis and Kafka broker (tansu) on 127.0.0.1 (prints the env file to source)
	@scripts/test-services.sh up

services-down: ## Stop them
	@scripts/test-services.sh down

bench: ## Measure, side by side: per-event runtime cost (in-process per store, over HTTP, 1/8/64 in flight), cold start vs the spawn floor, idle RSS, the engine's throughput (SQLite log and Kafka), the gateway vs nginx (wrk), the push scaler vs KEDA polling, the finance chain and the todo app; writes bench/results/ and the README's table (release build)
	$(CARGO) build --release --locked --workspace --bins
	@scripts/test-services.sh bench-tools
	@set -e; rows=$$(mktemp); export ZEROFN_BENCH_ROWS=$$rows; \
	scripts/test-services.sh down; env_file=$$(scripts/test-services.sh up); . "$$env_file"; \
	$(CARGO_TARGET_DIR_OR_DEFAULT)/release/bench; \
	$(CARGO) bench --locked -p zerofn-cli --bench engine; \
	$(CARGO) bench --locked -p zerofn-cli --bench gateway; \
	$(CARGO) bench --locked -p zerofn-cli --bench scaler; \
	$(CARGO) bench --locked -p zerofn-cli --bench chain; \
	$(CARGO) bench --locked -p zerofn-cli --bench todo; \
	scripts/image-size.sh >> $$rows; \
	$(CARGO_TARGET_DIR_OR_DEFAULT)/release/bench-report $$rows $(CURDIR); rm -f $$rows

profile: ## Where the engine's time goes: perf over 20 000 events to the probe from zero (N=, ARGS="--store memory"); target/profile/perf.txt (+ flamegraph.svg with inferno)
	$(CARGO) build --profile profiling --locked -p zerofn-cli -p zerofn-tests --bins
	scripts/profile.py $(ARGS)

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy -p zerofn --lib --no-default-features --locked -- -D warnings
	$(CARGO) clippy -p categorize --all-targets --features lambda --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

doc: ## Build the API docs (missing docs are errors in the runtime)
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

clean: ## Remove build output and local state
	$(CARGO) clean
	rm -rf .zerofn
