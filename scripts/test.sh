#!/usr/bin/env bash
# Lint, type-check and run every test against a real HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh wrk
.venv/bin/ruff check controller tests bench
.venv/bin/mypy
set +e
.venv/bin/pytest -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$code"
