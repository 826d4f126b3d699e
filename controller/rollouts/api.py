"""REST endpoints under /api/v1/rollouts; handlers only translate HTTP to the manager.

| method and path | what |
|---|---|
| `POST /rollouts` | start one (`?dry_run=true`: validate and show the plan) → 201 |
| `GET /rollouts` | all (`?gateway=NAME`, `?active=true`) |
| `GET /rollouts/{id}` | one: phase, step, weights, last check, events |
| `POST /rollouts/{id}/pause`, `…/resume`, `…/promote`, `…/abort` | commands, at any time |
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal, cast

from aiohttp import web
from pydantic import ValidationError

from controller.api import ApiError, dry_run_flag, read_json_body
from controller.model import validation_problems
from controller.rollouts.manager import RolloutManager, RolloutRequestError
from controller.rollouts.model import RolloutSpec
from controller.rollouts.runner import CommandRefused, ReadBackError, RolloutError
from controller.rollouts.store import RolloutStoreError

ROLLOUTS = web.AppKey("rollouts", RolloutManager)
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
ACTIONS = ("pause", "resume", "promote", "abort")


def _rollout_id(request: web.Request) -> str:
    value = request.match_info["rollout"]
    if not _ID.match(value):
        raise ApiError(400, "invalid rollout id", [{"field": "rollout", "message": "not an id"}])
    if not any(r.id == value for r in request.app[ROLLOUTS].rollouts()):
        raise ApiError(404, f"no rollout {value!r}", [{"field": "rollout", "message": "unknown"}])
    return value


async def create_rollout(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    dry_run = dry_run_flag(request)
    try:
        spec = RolloutSpec.model_validate(body)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ApiError(400, f"invalid {problems[0]['field']}", problems) from None
    try:
        # carried out even if the client goes away (the server cancels its handler then)
        view = await asyncio.shield(request.app[ROLLOUTS].create(spec, dry_run=dry_run))
    except RolloutRequestError as exc:
        problems = [{"field": exc.field, "message": exc.message}]
        raise ApiError(exc.status, exc.message, problems) from None
    except RolloutStoreError as exc:
        raise ApiError(503, f"not started: {exc}") from None
    return web.json_response(view, status=200 if dry_run else 201)


async def list_rollouts(request: web.Request) -> web.Response:
    manager = request.app[ROLLOUTS]
    gateway = request.query.get("gateway")
    active = request.query.get("active", "").lower() in ("true", "1")
    views = [
        manager.view(r.id)
        for r in manager.rollouts()
        if (gateway is None or r.gateway == gateway) and not (active and r.terminal)
    ]
    return web.json_response({"rollouts": views})


async def get_rollout(request: web.Request) -> web.Response:
    return web.json_response(request.app[ROLLOUTS].view(_rollout_id(request)))


async def command_rollout(request: web.Request) -> web.Response:
    rollout_id = _rollout_id(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, f"no action {action!r}: use one of {', '.join(ACTIONS)}")
    kind = cast(Literal["pause", "resume", "promote", "abort"], action)
    try:
        view = await asyncio.shield(request.app[ROLLOUTS].command(rollout_id, kind))
    except CommandRefused as exc:
        raise ApiError(exc.status, exc.message) from None
    except RolloutError as exc:
        raise ApiError(409, f"{action} refused: {exc}") from None
    except TimeoutError:
        raise ApiError(
            503, f"rollout {rollout_id} has not handled {action} yet: it stays queued"
        ) from None
    except (RolloutStoreError, ReadBackError) as exc:
        raise ApiError(503, f"{action} not done: {exc}") from None
    return web.json_response(view)


def add_rollout_routes(app: web.Application, manager: RolloutManager) -> None:
    app[ROLLOUTS] = manager
    base = "/api/v1/rollouts"
    app.router.add_post(base, create_rollout)
    app.router.add_get(base, list_rollouts)
    app.router.add_get(base + "/{rollout}", get_rollout)
    app.router.add_post(base + "/{rollout}/{action}", command_rollout)
