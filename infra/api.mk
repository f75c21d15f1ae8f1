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

.PHONY: fuzz lambda-build lambda-tools lambda-arch-check

fuzz: ## Fuzz the real API server from its OpenAPI document with schemathesis (no 5xx, crash or dropped connection)
	$(BUILD_BINS)
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
# LAMBDA_ARCH=arm64 builds for Graviton (cheaper per ms) when the Rust
# toolchain has the aarch64-unknown-linux-gnu target; the stack's
# LambdaArchitecture parameter must match (make deploy passes it).
# LAMBDA_FEATURES: cargo features of the Lambda binary; aws (the default)
# builds in the S3/SQS store, which the deployed function needs.
LAMBDA_ARCH ?= x86_64
LAMBDA_FEATURES ?= aws
LAMBDA_ARCH_FLAG = $(if $(filter arm64,$(LAMBDA_ARCH)),--arm64)
LAMBDA_FEATURES_FLAG = $(if $(strip $(LAMBDA_FEATURES)),--features $(LAMBDA_FEATURES))

lambda-arch-check:
	@case '$(LAMBDA_ARCH)' in \
	  x86_64) ;; \
	  arm64) if ! command -v rustup >/dev/null 2>&1; then \
	      echo "LAMBDA_ARCH=arm64 needs rustup to check for the aarch64-unknown-linux-gnu target; build with LAMBDA_ARCH=x86_64 or install rustup" >&2; exit 2; \
	    elif ! rustup target list --installed | grep -qx 'aarch64-unknown-linux-gnu'; then \
	      echo "LAMBDA_ARCH=arm64: the Rust toolchain lacks the aarch64-unknown-linux-gnu target." >&2; \
	      echo "Add it with:  rustup target add aarch64-unknown-linux-gnu   (then make lambda-build LAMBDA_ARCH=arm64 again)" >&2; exit 2; \
	    fi ;; \
	  *) echo "LAMBDA_ARCH must be x86_64 or arm64, not '$(LAMBDA_ARCH)'" >&2; exit 2 ;; \
	esac

lambda-build: lambda-tools lambda-arch-check ## Build the API for AWS Lambda (provided.al2023; LAMBDA_ARCH=x86_64|arm64, LAMBDA_FEATURES=aws): cargo lambda build --release
	PATH="$(CURDIR)/$(LAMBDA_VENV)/bin:$$PATH" $(CARGO) lambda build --release --locked \
	  $(LAMBDA_ARCH_FLAG) $(LAMBDA_FEATURES_FLAG) -p remediate-functions --bin remediate-api

.DEFAULT_GOAL := $(api_mk_default_goal)
