"""Reading a request: a JSON body within size, time and depth bounds, and the dry-run flag."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from controller.api.connections import LIMITS
from controller.api.errors import ApiError
from controller.errors import InvalidInput, TooLarge

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32
"""Deeper than any valid document (a gateway is 5 levels): refused before anything recurses."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_exceeded(value: Any, limit: int) -> bool:
    """Iterative, so the check itself cannot overflow the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN/Infinity) nested at most MAX_DEPTH levels, else InvalidInput."""
    problem = [{"field": "(body)", "message": "not JSON"}]
    try:
        # decoded first: JSON on the wire is UTF-8 (RFC 8259), and `loads` of bytes spends
        # a third of its time guessing an encoding
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        value, depth_error = None, True
    except (ValueError, UnicodeDecodeError) as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 JSON"
        raise InvalidInput(f"body is not valid JSON: {message}", problem) from None
    else:  # nesting needs an opening bracket a level: a body with few is never too deep
        openers = raw.count(b"{") + raw.count(b"[")
        depth_error = openers > MAX_DEPTH and _depth_exceeded(value, MAX_DEPTH)
    if depth_error:
        raise InvalidInput(
            f"body is nested deeper than {MAX_DEPTH} levels",
            [{"field": "(body)", "message": "nested too deeply"}],
        )
    return value


def _too_large() -> TooLarge:
    return TooLarge(
        f"body larger than {MAX_BODY} bytes", [{"field": "(body)", "message": "too large"}]
    )


async def read_json_body(request: web.Request) -> Any:
    """The body, within MAX_BODY bytes and `body_timeout` seconds (no timer when it is all
    in already, as a small body usually is with its headers)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _too_large()
    seconds = request.app[LIMITS].body_timeout
    try:
        if request.content.is_eof():
            raw = await request.read()
        else:
            async with asyncio.timeout(seconds):
                raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            f"the body did not arrive within {seconds:g} s",
            [{"field": "(body)", "message": "too slow"}],
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None
    return parse_json(raw)


def dry_run_flag(request: web.Request) -> bool:
    value = request.query.get("dry_run", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput.for_field("dry_run", "must be true or false")
    return value in ("true", "1")
