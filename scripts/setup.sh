#!/usr/bin/env bash
# Shared set-up for the demo and the tests: HAProxy and etcd (the fleet tests' store) from apt
# when missing, a venv, the package.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
for pkg in "$@"; do command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
    "$python" -m venv .venv 2>/dev/null || {
        as_root apt-get install -y -qq python3-venv >/dev/null && "$python" -m venv .venv; }
fi
# pip only when the venv is not up to date: a stamp keyed on pyproject.toml and this checkout
# (the install is editable: code changes need no reinstall, dependency changes do)
stamp=.venv/.weighbridge-installed
key="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$key" > "$stamp"
fi
