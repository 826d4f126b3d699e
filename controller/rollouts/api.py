"""REST endpoints under /api/v1/rollouts; handlers only translate HTTP to the manager.

| method and path | what |
|---|---|
| `POST /rollouts` | start one (`?dry_run=true`: validate and show the plan) → 201 |
| `GET /rollouts` | all (`?gateway=NAME`, `?active=true`) |
| `GET /rollouts/{id}` | one: phase, step, weights, last check, events |
| `POST /rollouts/{id}/pause`, `…/resume`, `…/promote`, `…/abort` | commands, at any time |

A command's `?dry_run=true` answers the rollout with `effect`: what it would do, or the 409.
"""

from __future__ import annotations

import asyncio
import re
from typing import cast

from aiohttp import web
from pydantic import ValidationError

from controller.api.body import dry_run_flag, read_json_body
from controller.errors import InvalidInput, NotFound, Unavailable, WeighbridgeError
from controller.model import validation_problems
from controller.rollouts.manager import RolloutManager
from controller.rollouts.spec import RolloutSpec
from controller.rollouts.state import CommandKind

ROLLOUTS = web.AppKey("rollouts", RolloutManager)
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
ACTIONS = ("pause", "resume", "promote", "abort")


def _rollout_id(request: web.Request) -> str:
    value = request.match_info["rollout"]
    if not _ID.fullmatch(value):
        raise InvalidInput.for_field("rollout", "not an id")
    return value


async def create_rollout(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    dry_run = dry_run_flag(request)
    try:
        spec = RolloutSpec.model_validate(body)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise InvalidInput(f"invalid {problems[0]['field']}", problems) from None
    # carried out even if the client goes away (the server cancels its handler then)
    view = await asyncio.shield(request.app[ROLLOUTS].create(spec, dry_run=dry_run))
    return web.json_response(view, status=200 if dry_run else 201)


async def list_rollouts(request: web.Request) -> web.Response:
    manager = request.app[ROLLOUTS]
    gateway = request.query.get("gateway")
    active = request.query.get("active", "").lower() in ("true", "1")
    selected = [
        r
        for r in manager.rollouts()
        if (gateway is None or r.gateway == gateway) and not (active and r.terminal)
    ]
    return web.json_response({"rollouts": await manager.views(selected)})


async def get_rollout(request: web.Request) -> web.Response:
    return web.json_response(await request.app[ROLLOUTS].view(_rollout_id(request)))


async def command_rollout(request: web.Request) -> web.Response:
    rollout_id = _rollout_id(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise NotFound(
            f"no action {action!r}: use one of {', '.join(ACTIONS)}",
            [{"field": "action", "message": "unknown"}],
        )
    kind = cast(CommandKind, action)
    manager = request.app[ROLLOUTS]
    try:
        view = await asyncio.shield(
            manager.command(rollout_id, kind, dry_run=dry_run_flag(request))
        )
    except TimeoutError:
        raise Unavailable(
            f"rollout {rollout_id} has not handled {action} yet: it stays queued"
        ) from None
    except WeighbridgeError as exc:
        exc.message = f"{action} refused: {exc.message}"
        raise
    return web.json_response(view)


def add_rollout_routes(app: web.Application, manager: RolloutManager) -> None:
    app[ROLLOUTS] = manager
    base = "/api/v1/rollouts"
    app.router.add_post(base, create_rollout)
    app.router.add_get(base, list_rollouts)
    app.router.add_get(base + "/{rollout}", get_rollout)
    app.router.add_post(base + "/{rollout}/{action}", command_rollout)
