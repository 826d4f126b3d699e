"""Webhooks: an HTTP POST of the rollout's state; 2xx means go. Timeouts and retries.

Calls go only where `--allow-outbound` allows (`outbound`), follow no redirect (a 3xx is a
no), and their answers are never read beyond the status: what a webhook says in its body
never reaches the rollout's events, which any API reader sees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from controller.rollouts.outbound import OutboundPolicy, guard, reason, redact_url
from controller.rollouts.spec import Webhook
from controller.rollouts.state import Rollout

RETRY_PAUSE = 0.2
"""Seconds before the first retry; doubled for each further one, at most 2 s."""


@dataclass(frozen=True)
class WebhookResult:
    url: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    """Our own short reason when there was no HTTP status (timed out, cannot connect …)."""

    def describe(self) -> str:
        """For events and logs: the URL with its secrets masked, the status or reason."""
        if self.status is not None:
            what = f"HTTP {self.status}"
            if 300 <= self.status < 400:
                what += " (redirects are not followed)"
        else:
            what = self.error or "no answer"
        return f"{redact_url(self.url)}: {what} after {self.attempts} attempt(s)"


async def call_webhook(
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    hook: Webhook,
    payload: dict[str, Any],
) -> WebhookResult:
    status: int | None = None
    error: str | None = None
    for attempt in range(1, hook.retries + 2):
        try:
            guard(policy, hook.url)
            async with session.post(
                hook.url,
                json=payload,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
            ) as response:
                status, error = response.status, None  # the body is not read
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, reason(exc)
        else:
            if 200 <= status < 300:
                return WebhookResult(hook.url, True, attempt, status)
        if attempt <= hook.retries:
            await asyncio.sleep(min(2.0, RETRY_PAUSE * 2 ** (attempt - 1)))  # retry backoff
    return WebhookResult(hook.url, False, hook.retries + 1, status, error)


async def call_all(
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    hooks: Sequence[Webhook],
    payload: dict[str, Any],
) -> list[WebhookResult]:
    """Every hook, concurrently; the caller decides what a failure means."""
    calls = (call_webhook(session, policy, hook, payload) for hook in hooks)
    return list(await asyncio.gather(*calls))


def payload(rollout: Rollout, event: str, next_step: int | None = None) -> dict[str, Any]:
    """What webhooks are sent: the rollout's state (and the step about to start)."""
    spec = rollout.spec
    body: dict[str, Any] = {
        "event": event,
        "rollout": rollout.id,
        "gateway": spec.gateway,
        "from_route": spec.from_route,
        "to_route": spec.to_route,
        "phase": rollout.phase,
        "step": rollout.step,
        "steps": len(rollout.plan),
        "weights": rollout.describe(*rollout.current()),
        "reason": rollout.reason,
    }
    if next_step is not None:
        body["next_step"] = next_step
        body["next_weights"] = rollout.describe(*rollout.target(next_step))
    return body
