#!/usr/bin/env bash
# Lint, type-check and run every test against a real HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh wrk
.venv/bin/ruff check controller tests bench
.venv/bin/mypy
set +e
# most of the suite waits on real processes (checks, reloads, rollouts), not the CPU: three
# workers, a test file each at a time (its module fixtures stay on one worker)
.venv/bin/pytest -p no:cacheprovider -n "${WEIGHBRIDGE_TEST_WORKERS:-3}" --dist loadfile "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$code"
