"""Prometheus checks: instant queries that must return one number.

Queries go only where `--allow-outbound` allows, follow no redirect and read at most
MAX_ANSWER bytes. Whatever goes wrong becomes *no data* (inconclusive) with a short reason of
our own; Prometheus's own text never reaches the rollout's events.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import aiohttp

from controller.rollouts.checks import Answer
from controller.rollouts.outbound import OutboundPolicy, guard, reason
from controller.rollouts.spec import Checks, RolloutSpec

MAX_ANSWER = 1024 * 1024


class NoNumber(ValueError):
    """Prometheus answered, but not with one number; the message is ours."""


async def query_prometheus(
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    url: str,
    query: str,
    timeout: float,
) -> float | None:
    """One instant query; the single number it returns, None for no (or no single) value."""
    endpoint = url.rstrip("/") + "/api/v1/query"
    guard(policy, endpoint)
    async with session.get(
        endpoint,
        params={"query": query},
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        if response.status != 200:
            raise NoNumber(f"HTTP {response.status}")
        raw = await response.content.read(MAX_ANSWER + 1)
    if len(raw) > MAX_ANSWER:
        raise NoNumber(f"answer larger than {MAX_ANSWER} bytes")
    try:
        body = json.loads(raw)
        success = body.get("status") == "success"
        number = _number(body["data"]) if success else None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise NoNumber("not a Prometheus query answer") from None
    if not success:
        raise NoNumber("status is not success")
    return number


def _number(data: dict[str, Any]) -> float | None:
    if data["resultType"] == "scalar":
        value = float(data["result"][1])
    elif data["resultType"] == "vector" and len(data["result"]) == 1:
        value = float(data["result"][0]["value"][1])
    else:
        return None
    return None if math.isnan(value) else value


async def query_checks(
    session: aiohttp.ClientSession,
    policy: OutboundPolicy,
    spec: RolloutSpec,
    seconds: float,
    backend: str,
) -> dict[str, Answer]:
    """Every Prometheus check of the rollout, concurrently, with `$window`, `$gateway`,
    `$route` and `$proxy` filled in."""
    checks: Checks | None = spec.checked
    if checks is None or not checks.prometheus or checks.prometheus_url is None:
        return {}
    url = checks.prometheus_url
    substitutions = {
        "$window": f"{max(1, math.ceil(seconds))}s",
        "$gateway": spec.gateway,
        "$route": spec.to_route,
        "$proxy": backend,
    }

    async def one(query: str) -> Answer:
        for name, value in substitutions.items():
            query = query.replace(name, value)
        try:
            number = await query_prometheus(session, policy, url, query, checks.prometheus_timeout)
        except NoNumber as exc:
            return Answer(None, f"Prometheus: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Answer(None, f"Prometheus: {reason(exc)}")
        return Answer(number, "" if number is not None else "Prometheus: no single number")

    answers = await asyncio.gather(*(one(check.query) for check in checks.prometheus))
    return {check.name: answer for check, answer in zip(checks.prometheus, answers, strict=True)}
