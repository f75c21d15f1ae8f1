# vps-remediate: make help lists the targets.
CARGO ?= cargo

# Targets of each part live beside it (infra/*.mk) and are listed by help too.
-include infra/*.mk

.PHONY: help dev test lint fmt bench bench-spool bench-http doc clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

dev: ## Start the whole system locally: API on 127.0.0.1:3035, executor, ./var spool, demo catalog, a printed token
	infra/dev/run.sh

# Features that test and lint build with: the S3/SQS store, the Lambda
# entry's use of it, the executor's SQS intake and S3 mirror, and the AWS
# end-to-end tests (whose executor needs the test-hooks pause). The AWS
# tests start moto from target/moto-venv, which `test` installs first.
AWS_FEATURES ?= remediate-spool/aws,remediate-functions/aws,remediate-executor/aws,remediate-executor/test-hooks,remediate-tests/aws

# Debug binaries for the unit checks and the fuzz run: the test build
# itself (its integration tests need both binaries), so after `make test`
# nothing is compiled again (a plain `cargo build` unifies features without
# the dev-dependencies and would rebuild much of the tree).
BUILD_BINS = $(CARGO) test --workspace --locked --features $(AWS_FEATURES) --no-run

test: moto-venv ## Run every test of the workspace, AWS store against moto included (the README's test command)
	$(CARGO) test --workspace --locked --features $(AWS_FEATURES)

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked --features $(AWS_FEATURES) -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: bench-spool bench-http bench-executor bench-aws ## Run every benchmark (release build; prints figures as ratios)

bench-spool: ## Spool benchmarks: durable enqueue vs bare loop and SQLite, claim, snapshot
	$(CARGO) bench --locked -p remediate-spool --bench spool

bench-http: ## HTTP benchmarks: enqueue through the API vs the spool, latency, start-up time
	$(CARGO) bench --locked -p remediate-functions --bench http

doc: ## Build the API docs (the spool's and config's design documents)
	$(CARGO) doc --workspace --no-deps

clean: ## Remove build output and the local ./var
	$(CARGO) clean
	rm -rf var
