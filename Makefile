# zerofn: the one entry point. CI runs `make test` (through .ci/run) and nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
CARGO_TARGET_DIR_OR_DEFAULT := $(or $(CARGO_TARGET_DIR),target)

.PHONY: help run status build test test-fast services-up services-down bench lint fmt doc clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## Build the functions and start the local engine: gateway on 127.0.0.1:8080, functions scaled 0..N
	$(CARGO) build --locked --bins --workspace --exclude zerofn-tests
	ZEROFN_LOG_FORMAT=$${ZEROFN_LOG_FORMAT:-compact} $(CARGO_TARGET_DIR_OR_DEFAULT)/debug/zerofn dev $(ARGS)

status: ## What the running engine is doing: replicas, lag, processed, retries, dead letters
	@$(CARGO_TARGET_DIR_OR_DEFAULT)/debug/zerofn status $(ARGS)

build: ## Build every crate (runtime, functions, test harness)
	$(CARGO) build --workspace --all-targets --locked

test: lint test-fast ## Lint, then run every test: unit, doc, contract golden, transport and process suites

test-fast: ## Run every test without the lint step (starts PostgreSQL and Redis on 127.0.0.1)
	@set -e; env_file=$$(scripts/test-services.sh up); \
	trap 'scripts/test-services.sh down' EXIT; \
	. "$$env_file"; \
	$(CARGO) build --workspace --bins --locked; \
	$(CARGO) test --workspace --locked; \
	$(CARGO) test -p categorize --features lambda --locked --test lambda

services-up: ## Start the test PostgreSQL and Redis (prints the env file to source)
	@scripts/test-services.sh up

services-down: ## Stop them
	@scripts/test-services.sh down

bench: ## Measure per-event cost: tracing disabled (default) vs logs off vs OTLP export (release build)
	$(CARGO) build --release --locked -p zerofn-tests --bins
	$(CARGO_TARGET_DIR_OR_DEFAULT)/release/bench

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
