#!/usr/bin/env bash
# A CI/CD deploy step: put the new version behind route `canary`, then let Weighbridge shift
# traffic to it in steps, gated by its error rate and response time, and roll back by itself
# if it misbehaves. The job fails (non-zero exit) unless the rollout was promoted.
#
#   WEIGHBRIDGE_API=10.0.0.5:9900 WEIGHBRIDGE_API_TOKEN=… NEW_INSTANCES="10.0.1.7:8080 10.0.1.8:8080" \
#     examples/ci-rollout.sh
#
# Exit codes: 0 promoted, 1 rolled back or aborted, 2 failed or refused, 3 timed out, 130
# interrupted (in the last two cases the rollout keeps running: the log's first rollout line
# has its id and the command that stops it, `weighbridge rollout abort <id>`).
set -euo pipefail

API="${WEIGHBRIDGE_API:-127.0.0.1:9900}"
GATEWAY="${GATEWAY:-shop}"
STABLE="${STABLE_ROUTE:-stable}"
CANARY="${CANARY_ROUTE:-canary}"
WB="${WEIGHBRIDGE_CLI:-weighbridge}"            # or: python -m controller
RESULT="${RESULT_FILE:-rollout-result.json}"
# shellcheck disable=SC2206
INSTANCES=(${NEW_INSTANCES:?set NEW_INSTANCES to the new version\'s host:port list})

# 1. The new version's instances, at 0 % (instances change live, no reload).
$WB instances --api "$API" "$GATEWAY" "$CANARY" set "${INSTANCES[@]}"
$WB weights --api "$API" "$GATEWAY" "$STABLE=100" "$CANARY=0"

# 2. The rollout: 1 → 5 → 10 → 25 → 50 → 100 %, a minute per step at least, each minute's
#    traffic checked (≥ 99 % non-5xx, ≤ 300 ms average response time, ≥ 200 responses,
#    else the step is held); two failed checks roll back in 3 steps, 5 s apart, so the
#    stable version is not flooded at once. Optional gates: PRE_STEP_WEBHOOK must answer 2xx
#    before each step (e.g. your own smoke tests), ROLLBACK_WEBHOOK is told about a rollback.
hooks=()
[[ -n "${PRE_STEP_WEBHOOK:-}" ]] && hooks+=(--pre-step-webhook "$PRE_STEP_WEBHOOK")
[[ -n "${ROLLBACK_WEBHOOK:-}" ]] && hooks+=(--rollback-webhook "$ROLLBACK_WEBHOOK")

set +e
$WB rollout start --api "$API" "$GATEWAY" --from "$STABLE" --to "$CANARY" \
    --steps "${STEPS:-1,5,10,25,50,100}" --interval "${INTERVAL:-60}" \
    --success-rate 99 --max-response-ms 300 --min-requests "${MIN_REQUESTS:-200}" \
    --failure-threshold 2 --max-inconclusive 30 \
    --rollback-steps 3 --rollback-interval 5 \
    "${hooks[@]}" \
    --wait --json --timeout "${ROLLOUT_TIMEOUT:-3600}" > "$RESULT"
code=$?
set -e

# 3. Report: the JSON has the phase, the reason, every step's start and every check; its
#    weights are HAProxy's at the end (after a rollback: the weights before the rollout).
python3 - "$RESULT" <<'PY'
import json, sys
view = json.load(open(sys.argv[1]))
print(f"rollout {view['id']}: {view['phase']} at step {view['step']}/{view['steps']}"
      f" ({', '.join(f'{r} {w}' for r, w in view['weights'].items())})")
if view.get("reason"):
    print(f"  reason: {view['reason']}")
PY
case $code in
  0) echo "promoted: $CANARY now takes all of $STABLE's traffic" ;;
  1) echo "rolled back: $CANARY is back at its weight before the rollout" >&2 ;;
  3) echo "still running after ${ROLLOUT_TIMEOUT:-3600} s" >&2 ;;
  *) echo "the rollout failed or was refused" >&2 ;;
esac
exit $code
