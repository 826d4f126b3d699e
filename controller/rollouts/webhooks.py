"""Webhooks: an HTTP POST of the rollout's state; 2xx means go. Timeouts and retries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from controller.rollouts.model import Webhook

RETRY_PAUSE = 0.2
"""Seconds before the first retry; doubled for each further one, at most 2 s."""


@dataclass(frozen=True)
class WebhookResult:
    url: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else (self.error or "no answer")
        return f"{self.url}: {what} after {self.attempts} attempt(s)"


async def call_webhook(
    session: aiohttp.ClientSession, hook: Webhook, payload: dict[str, Any]
) -> WebhookResult:
    status: int | None = None
    error: str | None = None
    for attempt in range(1, hook.retries + 2):
        try:
            async with session.post(
                hook.url, json=payload, timeout=aiohttp.ClientTimeout(total=hook.timeout)
            ) as response:
                await response.read()
                status, error = response.status, None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            if 200 <= status < 300:
                return WebhookResult(hook.url, True, attempt, status)
        if attempt <= hook.retries:
            await asyncio.sleep(min(2.0, RETRY_PAUSE * 2 ** (attempt - 1)))  # retry backoff
    return WebhookResult(hook.url, False, hook.retries + 1, status, error)


async def call_all(
    session: aiohttp.ClientSession, hooks: Sequence[Webhook], payload: dict[str, Any]
) -> list[WebhookResult]:
    """Every hook, concurrently; the caller decides what a failure means."""
    return list(await asyncio.gather(*(call_webhook(session, h, payload) for h in hooks)))
