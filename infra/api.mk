# HTTP API targets: the schemathesis fuzz run and the Lambda build. Included
# by the root Makefile. Python tools go into venvs under target/, made on
# first use from PyPI.

# Keep the including Makefile's default goal (help), whatever order the
# includes come in: restored at the end of this file.
api_mk_default_goal := $(.DEFAULT_GOAL)

CARGO ?= cargo
PYTHON ?= python3
FUZZ_VENV ?= target/fuzz-venv
LAMBDA_VENV ?= target/lambda-venv
CARGO_LAMBDA_VERSION := 1.9.2

.PHONY: fuzz lambda-build lambda-tools

fuzz: ## Fuzz the real API server from its OpenAPI document with schemathesis (no 5xx, crash or dropped connection)
	$(CARGO) build --locked -p remediate-functions --bin remediate-api
	FUZZ_VENV=$(FUZZ_VENV) REMEDIATE_API_BIN=$${CARGO_TARGET_DIR:-target}/debug/remediate-api bash tests/fuzz/schemathesis.sh

lambda-tools: ## Install cargo-lambda (with zig) into target/lambda-venv
	@if ! $(LAMBDA_VENV)/bin/pip show cargo-lambda 2>/dev/null | grep -q '^Version: $(CARGO_LAMBDA_VERSION)$$'; then \
	  echo "installing cargo-lambda $(CARGO_LAMBDA_VERSION) into $(LAMBDA_VENV)"; \
	  $(PYTHON) -m venv $(LAMBDA_VENV) && \
	  $(LAMBDA_VENV)/bin/pip install --quiet 'cargo-lambda==$(CARGO_LAMBDA_VERSION)'; \
	fi

# x86_64 with zig as the linker: the binary needs glibc 2.30 at most, so it
# runs on the provided.al2023 runtime (glibc 2.34). Output:
# target/lambda/remediate-api/bootstrap.
lambda-build: lambda-tools ## Build the API for AWS Lambda (provided.al2023, x86_64): cargo lambda build --release
	PATH="$(CURDIR)/$(LAMBDA_VENV)/bin:$$PATH" $(CARGO) lambda build --release --locked \
	  -p remediate-functions --bin remediate-api

.DEFAULT_GOAL := $(api_mk_default_goal)
