# Executor targets (the seed runbook's ops-worker names). Included by the
# root Makefile. Local by default; set VPS_HOST=user@host to act on a VPS
# over ssh (the binary is built here and copied there).

# Keep the including Makefile's default goal (help), whatever order the
# includes come in: restored at the end of this file.
executor_mk_default_goal := $(.DEFAULT_GOAL)

CARGO ?= cargo
VPS_HOST ?=
# Local development spool and catalog for ops-worker / ops-worker-once.
OPS_SPOOL ?= ./var/spool
OPS_HOST_ID ?= $(shell hostname)
EXECUTOR_UNIT := infra/systemd/remediate-executor.service
EXECUTOR_RELEASE_BIN := target/release/remediate-executor
API_UNIT := infra/systemd/remediate-api.service
API_RELEASE_BIN := target/release/remediate-api
# sudo for the install steps; empty when already root.
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Runs a command here, or on VPS_HOST over ssh.
ON_HOST = $(if $(VPS_HOST),ssh $(VPS_HOST),sh -c)

.PHONY: ops-worker ops-worker-once vps-ops-worker-install vps-ops-worker-status \
	vps-ops-worker-logs vps-ops-worker-remove executor-unit-verify api-unit-verify \
	units-verify vps-api-install soak soak-ci bench-executor

ops-worker: ## Run the executor daemon in the foreground on ./var/spool (OPS_SPOOL, OPS_HOST_ID)
	mkdir -p $(dir $(OPS_SPOOL)) && chmod 700 $(dir $(OPS_SPOOL))
	VPS_REMEDIATE_CATALOG=$${VPS_REMEDIATE_CATALOG:-demo} \
	$(CARGO) run -p remediate-executor -- run --spool $(OPS_SPOOL) --host-id $(OPS_HOST_ID)

ops-worker-once: ## Drain up to OPS_WORKER_DRAIN_LIMIT due runs once; exit 0 when all ended well
	mkdir -p $(dir $(OPS_SPOOL)) && chmod 700 $(dir $(OPS_SPOOL))
	VPS_REMEDIATE_CATALOG=$${VPS_REMEDIATE_CATALOG:-demo} \
	$(CARGO) run -p remediate-executor -- once --spool $(OPS_SPOOL) --host-id $(OPS_HOST_ID)

vps-ops-worker-install: ## Build and install the executor systemd service (here, or on VPS_HOST over ssh)
	$(CARGO) build --release --locked -p remediate-executor
ifeq ($(VPS_HOST),)
	$(SUDO) install -m 0755 $(EXECUTOR_RELEASE_BIN) /usr/local/bin/remediate-executor
	$(SUDO) install -m 0644 $(EXECUTOR_UNIT) /etc/systemd/system/remediate-executor.service
	$(SUDO) sh infra/systemd/install-executor.sh
else
	scp $(EXECUTOR_RELEASE_BIN) $(EXECUTOR_UNIT) infra/systemd/install-executor.sh $(VPS_HOST):/tmp/
	ssh $(VPS_HOST) 'sudo install -m 0755 /tmp/remediate-executor /usr/local/bin/remediate-executor && \
	  sudo install -m 0644 /tmp/remediate-executor.service /etc/systemd/system/remediate-executor.service && \
	  sudo sh /tmp/install-executor.sh && rm -f /tmp/remediate-executor /tmp/remediate-executor.service /tmp/install-executor.sh'
endif

vps-ops-worker-status: ## Show the executor service status and its queue (here, or on VPS_HOST)
	$(ON_HOST) 'systemctl status --no-pager remediate-executor; sudo -u vps-remediate remediate-executor queue list --spool /var/lib/vps-remediate || true'

vps-ops-worker-logs: ## Follow the executor's journal (here, or on VPS_HOST)
	$(ON_HOST) 'journalctl -u remediate-executor -f -n 200 --no-pager'

vps-ops-worker-remove: ## Stop, disable and remove the executor service; keeps the spool and /etc/vps-remediate
	$(ON_HOST) '$(if $(VPS_HOST),sudo,$(SUDO)) systemctl disable --now remediate-executor || true; \
	  $(if $(VPS_HOST),sudo,$(SUDO)) rm -f /etc/systemd/system/remediate-executor.service /usr/local/bin/remediate-executor; \
	  $(if $(VPS_HOST),sudo,$(SUDO)) systemctl daemon-reload'

# systemd-analyze verify checks that ExecStart's binary exists: point the
# unit at this checkout's debug build in a temporary copy. It exits 0 on an
# unknown or misspelt key and only prints a warning, so any output fails.
VERIFY_UNIT = tmp=$$(mktemp -d) && \
	sed "s|/usr/local/bin/$(1)|$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/$(1)|g" \
	  $(2) > $$tmp/$(notdir $(2)) && \
	systemd-analyze verify $$tmp/$(notdir $(2)) > $$tmp/out 2>&1; rc=$$?; cat $$tmp/out; \
	if [ $$rc = 0 ] && [ -s $$tmp/out ]; then rc=1; fi; rm -rf $$tmp; \
	[ $$rc = 0 ] && echo "$(notdir $(2)): ok"; exit $$rc

executor-unit-verify: ## Check the executor unit with systemd-analyze verify (against a debug build)
	$(BUILD_BINS)
	@$(call VERIFY_UNIT,remediate-executor,$(EXECUTOR_UNIT))

api-unit-verify: ## Check the API server unit with systemd-analyze verify (against a debug build)
	$(BUILD_BINS)
	@$(call VERIFY_UNIT,remediate-api,$(API_UNIT))

units-verify: executor-unit-verify api-unit-verify ## Check both systemd units (CI)

vps-api-install: ## Build and install the local API server's systemd service (here, or on VPS_HOST over ssh)
	$(CARGO) build --release --locked -p remediate-functions
ifeq ($(VPS_HOST),)
	$(SUDO) install -m 0755 $(API_RELEASE_BIN) /usr/local/bin/remediate-api
	$(SUDO) install -m 0644 $(API_UNIT) /etc/systemd/system/remediate-api.service
	$(SUDO) sh infra/systemd/install-api.sh
else
	scp $(API_RELEASE_BIN) $(API_UNIT) infra/systemd/install-api.sh $(VPS_HOST):/tmp/
	ssh $(VPS_HOST) 'sudo install -m 0755 /tmp/remediate-api /usr/local/bin/remediate-api && \
	  sudo install -m 0644 /tmp/remediate-api.service /etc/systemd/system/remediate-api.service && \
	  sudo sh /tmp/install-api.sh && rm -f /tmp/remediate-api /tmp/remediate-api.service /tmp/install-api.sh'
endif

bench-executor: ## Executor benchmarks (release): pickup latency, /usr/bin/true throughput vs a bare loop, RSS idle and with 100k queued
	$(CARGO) bench --locked -p remediate-executor --bench executor

# The crash soak drives the real binary, so build it first (the tests crate
# finds it beside its own test binaries). SOAK_SEED=<n> replays a schedule.
# The long soak runs release builds: a debug executor needs 0.5-1 s from
# start to its first claim once a few thousand records lie in the spool,
# so most of its lives would end (50-500 ms) before they claim anything
# and the soak would crawl (a 2,000-run debug soak took 1,000 s and
# another stalled; release takes about a minute).
SOAK_RUNS ?= 2000
soak: ## Crash soak: SOAK_RUNS (2000) runs, the executor SIGKILLed every 50-500 ms until all are terminal (release build)
	$(CARGO) build --release --locked -p remediate-executor
	SOAK_RUNS=$(SOAK_RUNS) $(CARGO) test --release --locked -p remediate-tests --test soak -- --nocapture

soak-ci: ## The crash soak at CI size (300 runs, debug build, under a minute)
	$(CARGO) build --locked -p remediate-executor
	SOAK_RUNS=300 $(CARGO) test --locked -p remediate-tests --test soak -- --nocapture

.DEFAULT_GOAL := $(executor_mk_default_goal)
