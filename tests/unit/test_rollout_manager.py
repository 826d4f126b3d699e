"""Creating rollouts: refusals against the desired state, ids per gateway, persistence in
rollouts.json, rollouts of deleted gateways ended and pruned, URLs outside --allow-outbound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller.desired import Desired, Record
from controller.errors import ConflictingState, InvalidInput, NotFound, WeighbridgeError
from controller.metrics import Metrics
from controller.model import Config
from controller.rollouts.manager import RolloutManager
from controller.rollouts.outbound import OutboundPolicy
from controller.rollouts.spec import RolloutSpec


def desired(config: dict[str, Any]) -> Desired:
    gateways = Config.model_validate(config).gateways
    return Desired.of({name: Record(g, 1) for name, g in gateways.items()}, 1)


class Engine:
    def __init__(self, config: dict[str, Any]) -> None:
        self.desired = desired(config)
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
    ("canary", "body", "kind", "field"),
    [
        ({}, {"gateway": "nope"}, NotFound, "gateway"),
        ({}, {"from_route": "nope"}, NotFound, "from_route"),
        ({}, {"gateway": "db"}, InvalidInput, "gateway"),
        ({"instances": []}, {}, InvalidInput, "to_route"),
        ({}, {"strategy": {"type": "ab", "requests": 10}}, InvalidInput, "strategy"),
        (
            {},
            {"webhooks": {"pre_step": [{"url": "http://10.1.2.3/gate"}]}},
            InvalidInput,
            "webhooks.pre_step.0.url",
        ),
        (
            {},
            {"webhooks": {"rollback": [{"url": "http://127.0.0.1:1/", "timeout": 1}] * 2}},
            None,
            "",
        ),
        (
            {},
            {
                "checks": {
                    "prometheus_url": "http://[::ffff:192.168.0.1]:9090",
                    "prometheus": [{"name": "p99", "query": "q", "max": 1}],
                }
            },
            InvalidInput,
            "checks.prometheus_url",
        ),
    ],
)
async def test_refusals(
    tmp_path: Path,
    canary: dict[str, Any],
    body: dict[str, Any],
    kind: type[WeighbridgeError] | None,
    field: str,
) -> None:
    manager = RolloutManager(Engine(gateway(**canary)), tmp_path)  # type: ignore[arg-type]
    if kind is None:  # loopback: allowed by default
        await manager.create(spec(**body), dry_run=True)
        return
    with pytest.raises(kind) as refused:
        await manager.create(spec(**body))
    assert refused.value.problems[0]["field"] == field
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
    with pytest.raises(ConflictingState):
        await manager.create(spec())
    await manager.stop()  # the runner is cancelled: the persisted state stays
    document = json.loads((tmp_path / "rollouts.json").read_text())
    assert document["format"] == 2 and document["sequences"] == {"shop": 1}
    engine.metrics = Metrics(CollectorRegistry())
    again = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    assert [r.id for r in again.rollouts()] == ["shop-1"]
    assert again.active("shop") is not None


async def test_ids_count_per_gateway_and_are_never_reused(tmp_path: Path) -> None:
    """Issue 10.6: the first rollout of `broken` was `broken-3` (numbered across gateways)."""
    config = gateway()
    config["gateways"]["blog"] = config["gateways"]["shop"] | {"bind": "127.0.0.1:8081"}
    engine = Engine(config)
    manager = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    ids = []
    for name in ("shop", "blog", "shop", "blog", "shop"):
        view = await manager.create(spec(gateway=name))
        ids.append(view["id"])
        await end(manager, view["id"])
    assert ids == ["shop-1", "blog-1", "shop-2", "blog-2", "shop-3"]
    dry = await manager.create(spec(), dry_run=True)
    assert dry["id"] == "shop-4" and dry["dry_run"] is True
    await manager.stop()
    # the gateway is deleted: its rollouts are pruned, its number is kept
    engine.desired = engine.desired.with_gateway("shop", None, 2)
    engine.metrics = Metrics(CollectorRegistry())
    again = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    assert [r.id for r in again.rollouts()] == ["blog-1", "blog-2"]
    engine.desired = desired(gateway())
    assert (await again.create(spec()))["id"] == "shop-4"
    await again.stop()


async def end(manager: RolloutManager, rollout_id: str) -> None:
    """Stop the runner (this fake engine cannot run one) and end the rollout by hand."""
    await manager._stop_runner(rollout_id)
    manager._get(rollout_id).end("aborted", "ended by the test", 0.0)
    await manager.save()


async def test_a_deleted_gateway_ends_its_active_rollout(tmp_path: Path) -> None:
    """Issue 10.4: rollouts of deleted gateways stayed listed (and active)."""
    engine = Engine(gateway())
    manager = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    view = await manager.create(spec())
    await manager.command(view["id"], "pause")
    engine.desired = desired({"gateways": {}})
    await manager.end_orphans()
    assert list(manager.rollouts()) == []  # ended `failed`, then pruned
    document = json.loads((tmp_path / "rollouts.json").read_text())
    assert document["rollouts"] == [] and document["sequences"] == {"shop": 1}
    assert manager.metrics._results[("shop", "failed")] == 1
    await manager.stop()


async def test_a_format_1_file_keeps_its_numbers(tmp_path: Path) -> None:
    engine = Engine(gateway())
    manager = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    await manager.create(spec())
    await manager.stop()
    path = tmp_path / "rollouts.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps({"format": 1, "sequence": 7, "rollouts": document["rollouts"]}))
    engine.metrics = Metrics(CollectorRegistry())
    again = RolloutManager(engine, tmp_path)  # type: ignore[arg-type]
    assert [r.id for r in again.rollouts()] == ["shop-1"]
    assert again._sequences == {"shop": 7}


async def test_outbound_names_are_resolved_at_creation(tmp_path: Path) -> None:
    """`localhost` resolves to loopback: refused when only another network is allowed."""
    body = {"webhooks": {"pre_step": [{"url": "http://localhost:9/x"}]}}
    allowed = RolloutManager(Engine(gateway()), tmp_path)  # type: ignore[arg-type]
    await allowed.create(spec(**body), dry_run=True)
    policy = OutboundPolicy.parse(["10.0.0.0/8"])
    other = RolloutManager(Engine(gateway()), tmp_path, outbound=policy)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not allowed by --allow-outbound"):
        await other.create(spec(**body), dry_run=True)
    by_name = OutboundPolicy.parse(["localhost:9"])
    named = RolloutManager(Engine(gateway()), tmp_path, outbound=by_name)  # type: ignore[arg-type]
    await named.create(spec(**body), dry_run=True)
