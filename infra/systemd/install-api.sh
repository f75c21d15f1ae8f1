#!/bin/sh
# Second half of `make vps-api-install`, run as root on the target host
# after the binary and the unit are in place: the service user (shared with
# the executor: both must own the spool), the config directory with an
# empty token file, and the service itself. Idempotent.
set -eu

if ! id vps-remediate >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/vps-remediate --no-create-home \
        --shell /usr/sbin/nologin vps-remediate
fi
install -d -m 0750 -o root -g vps-remediate /etc/vps-remediate
for f in api.env remediate.toml tokens.toml; do
    if [ ! -e "/etc/vps-remediate/$f" ]; then
        install -m 0640 -o root -g vps-remediate /dev/null "/etc/vps-remediate/$f"
    fi
done
systemctl daemon-reload
systemctl enable --now remediate-api
systemctl --no-pager --lines=5 status remediate-api || true
echo "Add API tokens to /etc/vps-remediate/tokens.toml ([[token]] name, role, sha256 from"
echo "'remediate-api hash-token'), then: systemctl restart remediate-api"
