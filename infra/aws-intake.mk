# The executor's AWS mode (SQS intake, S3 mirror): end-to-end tests against
# moto. Included by the root Makefile.

aws_intake_mk_default_goal := $(.DEFAULT_GOAL)

CARGO ?= cargo

.PHONY: test-aws-intake

test-aws-intake: moto-venv ## AWS mode against moto: intake order and faults, mirror, router -> SQS -> executor, SIGKILL between import and delete
	$(CARGO) clippy --locked --no-deps -p remediate-executor -p remediate-tests --all-targets \
	  --features remediate-executor/aws,remediate-executor/test-hooks,remediate-tests/aws -- -D warnings
	$(CARGO) build --locked -p remediate-executor --features aws,test-hooks
	$(CARGO) test --locked -p remediate-tests --features aws --test aws_intake --test aws_e2e

.DEFAULT_GOAL := $(aws_intake_mk_default_goal)
