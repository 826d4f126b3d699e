"""Automated rollouts: canary, blue/green and A/B with metric gates, pauses and safe rollback.

`model` (spec and state, pure) → `checks` (verdicts from counter deltas, pure) → `runner` (one
rollout's state machine over the engine) → `manager` (all rollouts, persistence) → `api`.
See docs/rollouts.md.
"""
