"""Automated rollouts: canary, blue/green and A/B with metric gates, pauses and safe rollback.

`spec` (what is asked, pure) and `state` (where it stands, pure) → `checks` (verdicts from
counter deltas) → `decide` (what an evaluation leads to) → `pair` (the two routes' weights
through the engine, read back from HAProxy), `webhooks`, `prometheus` and `outbound` (the
allow-list for both) → `runner` (one rollout's state machine) → `manager` (all rollouts,
persistence) → `view` and `api`; `text` says it all in words. See docs/rollouts.md.
"""
