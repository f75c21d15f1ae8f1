# HTTP API targets: the schemathesis fuzz run. Included
# by the root Makefile. Python tools go into venvs under target/, made on
# first use from PyPI.

# Keep the including Makefile's default goal (help), whatever order the
# includes come in: restored at the end of this file.
api_mk_default_goal := $(.DEFAULT_GOAL)

CARGO ?= cargo
PYTHON ?= python3
FUZZ_VENV ?= target/fuzz-venv

.PHONY: fuzz

fuzz: ## Fuzz the real API server from its OpenAPI document with schemathesis (no 5xx, crash or dropped connection)
	$(CARGO) build --locked -p remediate-functions --bin remediate-api
	FUZZ_VENV=$(FUZZ_VENV) REMEDIATE_API_BIN=target/debug/remediate-api bash tests/fuzz/schemathesis.sh

.DEFAULT_GOAL := $(api_mk_default_goal)
