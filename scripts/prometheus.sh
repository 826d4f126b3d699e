#!/usr/bin/env bash
# Debian's Prometheus, for tests/integration/test_prometheus.py (which runs this script when
# `prometheus` is missing) and for looking at the metrics by hand. Installs the package when
# `prometheus` is not on the PATH, and nothing else; refreshes apt's lists only when apt
# knows no candidate for it yet.
set -euo pipefail

command -v prometheus >/dev/null 2>&1 && exit 0

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    as_root apt-get update -qq
fi
echo "installing prometheus with apt-get" >&2
as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null
