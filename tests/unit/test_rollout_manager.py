"""Creating rollouts: refusals against the desired state, persistence in rollouts.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller.metrics import Metrics
from controller.model import Config
from controller.rollouts.manager import RolloutManager, RolloutRequestError
from controller.rollouts.model import RolloutSpec
from controller.store import Revisioned


class Engine:
    def __init__(self, config: dict[str, Any]) -> None:
        self.desired = Revisioned(Config.model_validate(config), 1)
        self.metrics = Metrics(CollectorRegistry())
        self.map_dir = "/nonexistent"


def gateway(**canary: Any) -> dict[str, Any]:
    return {
        "gateways": {
            "shop": {
                "bind": "127.0.0.1:8080",
                "routes": {
                    "stable": {"weight": "100%", "instances": ["127.0.0.1:9001"]},
                    "canary": {"weight": "0%", "instances": ["127.0.0.1:9101"]} | canary,
                },
            },
            "db": {
                "bind": "127.0.0.1:5432",
                "mode": "tcp",
                "routes": {
                    "stable": {"weight": "100%", "instances": ["127.0.0.1:9002"]},
                    "canary": {"weight": "0%", "instances": ["127.0.0.1:9102"]},
                },
            },
        }
    }


def spec(**overrides: Any) -> RolloutSpec:
    body = {
        "gateway": "shop",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": ["50%"]},
    }
    return RolloutSpec.model_validate(body | overrides)


@pytest.mark.parametrize(
    ("canary", "body", "status", "field"),
    [
        ({}, {"gateway": "nope"}, 404, "gateway"),
        ({}, {"from_route": "nope"}, 404, "from_route"),
        ({}, {"gateway": "db"}, 400, "gateway"),
        ({"instances": []}, {}, 400, "to_route"),
        ({}, {"strategy": {"type": "ab", "requests": 10}}, 400, "strategy"),
    ],
)
async def test_refusals(
    tmp_path: Path, canary: dict[str, Any], body: dict[str, Any], status: int, field: str
) -> None:
    manager = RolloutManager(Engine(gateway(**canary)), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(RolloutRequestError) as refused:
        await manager.create(spec(**body))
    assert (refused.value.status, refused.value.field) == (status, field)
    assert not (tmp_path / "rollouts.json").exists()


async def test_dry_run_shows_the_plan_and_stores_nothing(tmp_path: Path) -> None:
    manager = RolloutManager(Engine(gateway()), tmp_path)  # type: ignore[arg-type]
    view = await manager.create(spec(), dry_run=True)
    assert [p["weights"] for p in view["plan"]] == [
        {"stable": "50%", "canary": "50%"},
        {"stable": "0%", "canary": "100%"},
    ]
    assert list(manager.rollouts()) == []
    assert not (tmp_path / "rollouts.json").exists()


async def test_created_rollouts_are_persisted_and_loaded_back(tmp_path: Path) -> None:
    engine = Engine(gateway())
    manager = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    view = await manager.create(spec())
    assert view["id"] == "shop-1" and view["phase"] == "progressing"
    with pytest.raises(RolloutRequestError) as busy:
        await manager.create(spec())
    assert busy.value.status == 409
    await manager.stop()  # the runner is cancelled: the persisted state stays
    document = json.loads((tmp_path / "rollouts.json").read_text())
    assert document["format"] == 1 and document["sequence"] == 1
    engine.metrics = Metrics(CollectorRegistry())
    again = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    assert [r.id for r in again.rollouts()] == ["shop-1"]
    assert again.active("shop") is not None
