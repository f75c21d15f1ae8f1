# AWS deploy targets: lint the CloudFormation template, print the plan,
# deploy and undeploy. Included by the root Makefile. infra/aws/README.md
# walks through a whole deploy. cfn-lint comes from PyPI into a venv under
# target/, made on first use.

# Keep the including Makefile's default goal (help), whatever order the
# includes come in: restored at the end of this file.
deploy_mk_default_goal := $(.DEFAULT_GOAL)

PYTHON ?= python3
CFN_LINT_VERSION := 1.58.0
CFN_LINT_VENV ?= target/cfn-lint-venv
CFN_TEMPLATE := infra/aws/template.yaml
# Fails on errors and on warnings (W...), not only on errors.
CFN_LINT = $(CFN_LINT_VENV)/bin/cfn-lint --non-zero-exit-code warning

# Deploy settings (environment or make variables); plan.py validates them.
STACK_NAME ?= vps-remediate
AWS_REGION ?= us-east-1
HOST_IDS ?=
QUEUE_PREFIX ?= vps-remediate
FUNCTION_NAME ?= vps-remediate-api
ARTIFACT_BUCKET ?=
DEPLOY_FEATURES ?= aws
DEPLOY_ENV = STACK_NAME='$(STACK_NAME)' AWS_REGION='$(AWS_REGION)' HOST_IDS='$(HOST_IDS)' \
	QUEUE_PREFIX='$(QUEUE_PREFIX)' FUNCTION_NAME='$(FUNCTION_NAME)' LAMBDA_ARCH='$(LAMBDA_ARCH)' \
	ARTIFACT_BUCKET='$(ARTIFACT_BUCKET)' DEPLOY_FEATURES='$(DEPLOY_FEATURES)' CARGO='$(CARGO)' \
	LAMBDA_VENV='$(LAMBDA_VENV)' MAKE='$(MAKE)'

.PHONY: cfn-lint-tools cfn-lint cfn-lint-selftest deploy-check deploy-package deploy undeploy

cfn-lint-tools: ## Install cfn-lint (pinned) into target/cfn-lint-venv
	@if ! $(CFN_LINT_VENV)/bin/pip show cfn-lint 2>/dev/null | grep -q '^Version: $(CFN_LINT_VERSION)$$'; then \
	  echo "installing cfn-lint $(CFN_LINT_VERSION) into $(CFN_LINT_VENV)"; \
	  $(PYTHON) -m venv $(CFN_LINT_VENV) && \
	  $(CFN_LINT_VENV)/bin/pip install --quiet 'cfn-lint==$(CFN_LINT_VERSION)'; \
	fi

cfn-lint: cfn-lint-tools ## Lint the AWS template (cfn-lint: errors and warnings fail) and check its security properties
	$(CFN_LINT) -- $(CFN_TEMPLATE)
	$(CFN_LINT_VENV)/bin/python infra/aws/check_template.py $(CFN_TEMPLATE)

cfn-lint-selftest: cfn-lint-tools ## Prove the template checks can fail: cfn-lint and the security checks on broken copies
	$(CFN_LINT_VENV)/bin/python infra/aws/selftest.py $(CFN_TEMPLATE) $(CFN_LINT)
	bash infra/aws/deploy-selftest.sh

deploy-check: cfn-lint ## Validate the deploy settings (HOST_IDS=a,b ...) and print the plan; calls no AWS API
	@$(DEPLOY_ENV) $(PYTHON) infra/aws/plan.py plan

deploy-package: ## Build and pack the function's zip as make deploy does, without AWS (TOKENS_FILE=path to pack a token file)
	@$(DEPLOY_ENV) TOKENS_FILE='$(TOKENS_FILE)' bash infra/aws/deploy.sh package

deploy: ## Deploy AWS mode: the CloudFormation stack, then cargo lambda deploy (HOST_IDS, ARTIFACT_BUCKET; needs AWS credentials)
	@$(DEPLOY_ENV) bash infra/aws/deploy.sh deploy

undeploy: ## Delete the stack (CONFIRM=<stack name>; the run bucket is kept; needs AWS credentials)
	@$(DEPLOY_ENV) CONFIRM='$(CONFIRM)' bash infra/aws/deploy.sh undeploy

.DEFAULT_GOAL := $(deploy_mk_default_goal)
