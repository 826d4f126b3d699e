#!/usr/bin/env bash
# The demo stack: HAProxy, the controller and demo services (stable ×4, canary ×8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/weighbridge demo "$@"
