# AWS store targets: the moto server the S3/SQS tests talk to, and the S3/SQS
# store benchmark. Included by the root Makefile.

# Keep the including Makefile's default goal (help), whatever order the
# includes come in: restored at the end of this file.
aws_mk_default_goal := $(.DEFAULT_GOAL)

CARGO ?= cargo
PYTHON ?= python3
MOTO_VENV ?= target/moto-venv
MOTO_VERSION := 5.2.5

.PHONY: moto-venv bench-aws

moto-venv: ## Install moto's S3/SQS server (pinned) into target/moto-venv for the AWS store tests
	@if ! $(MOTO_VENV)/bin/pip show moto 2>/dev/null | grep -q '^Version: $(MOTO_VERSION)$$' \
	  || [ ! -x $(MOTO_VENV)/bin/moto_server ]; then \
	  echo "installing moto[server] $(MOTO_VERSION) into $(MOTO_VENV)"; \
	  $(PYTHON) -m venv $(MOTO_VENV) && \
	  $(MOTO_VENV)/bin/pip install --quiet 'moto[server]==$(MOTO_VERSION)'; \
	fi

bench-aws: moto-venv ## S3/SQS store against moto next to the local spool: enqueue (1 and 8 writers), claim+start+complete, as ratios
	$(CARGO) bench --locked -p remediate-spool --features aws --bench aws

.DEFAULT_GOAL := $(aws_mk_default_goal)
