#!/usr/bin/env bash
# Set up everything the demo and the tests need, on a fresh Debian 12 machine:
#   - server packages (PostgreSQL, Redis, Prometheus, PgBouncer, nftables, openssl) with apt when missing, as root;
#   - a virtual environment in .venv with the SDK (editable) and its dev extras.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(postgresql redis-server redis-tools redis-sentinel prometheus prometheus-alertmanager pgbouncer nftables procps openssl python3-venv)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    # policy-rc.d keeps the packages' own services from starting: tests start private servers on free ports.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/pip --version | cut -d' ' -f1-2))"
