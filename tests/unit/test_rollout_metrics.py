"""Rollout metrics: per desired gateway, from the rollouts; counters at zero from the start."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.rollouts.checks import Window, evaluate
from controller.rollouts.metrics import PHASE_LABELS, RolloutMetrics, latest_by_gateway
from controller.rollouts.spec import RolloutSpec, plan_steps
from controller.rollouts.state import Origin, Rollout


def rollout(rollout_id: str, created: float, phase: str = "progressing") -> Rollout:
    spec = RolloutSpec.model_validate(
        {
            "gateway": "shop",
            "from_route": "stable",
            "to_route": "canary",
            "strategy": {"type": "canary", "steps": ["10%", "100%"]},
            "checks": {"success_rate": "99%", "max_response_ms": 250, "min_requests": 10},
        }
    )
    return Rollout(
        id=rollout_id,
        spec=spec,
        created_at=created,
        origin=Origin(from_weight=10000, to_weight=0),
        plan=plan_steps(spec.strategy),
        phase=phase,  # type: ignore[arg-type]
    )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_names_are_exported_even_without_gateways() -> None:
    registry = CollectorRegistry()
    RolloutMetrics(registry)
    names = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert "weighbridge_rollout_phase" in names and "weighbridge_rollout_results" in names


def test_phase_step_checks_and_counters_per_gateway() -> None:
    registry = CollectorRegistry()
    current = rollout("shop-2", 2.0)
    current.step, current.step_started_at = 1, 1234.5
    current.last_check = evaluate(current.spec.checks, Window(100, 1, 1.0, 42), at=0.0, step=1)
    rollouts = [rollout("shop-1", 1.0, "rolled_back"), current]
    metrics = RolloutMetrics(registry, lambda: ["shop", "blog"], lambda: rollouts)
    metrics.evaluated("shop", "pass")
    metrics.finished("shop", "rolled_back")
    seen = samples(registry)
    for phase in PHASE_LABELS:
        assert seen[("weighbridge_rollout_phase", (("gateway", "shop"), ("phase", phase)))] == (
            1.0 if phase == "progressing" else 0.0
        )
        blog = 1.0 if phase == "none" else 0.0
        assert seen[("weighbridge_rollout_phase", (("gateway", "blog"), ("phase", phase)))] == blog
    assert seen[("weighbridge_rollout_step", (("gateway", "shop"),))] == 1
    assert seen[("weighbridge_rollout_steps", (("gateway", "shop"),))] == 2
    key = (
        "weighbridge_rollout_step_started_timestamp_seconds",
        (("gateway", "shop"), ("step", "1")),
    )
    assert seen[key] == 1234.5
    value = "weighbridge_rollout_check_value"
    assert seen[(value, (("check", "success_rate"), ("gateway", "shop")))] == 0.99
    assert seen[(value, (("check", "response_time"), ("gateway", "shop")))] == 0.042  # seconds
    threshold = (
        "weighbridge_rollout_check_threshold",
        (("check", "response_time"), ("gateway", "shop")),
    )
    assert seen[threshold] == 0.25
    verdicts = "weighbridge_rollout_evaluations_total"
    assert seen[(verdicts, (("gateway", "shop"), ("verdict", "pass")))] == 1
    assert seen[(verdicts, (("gateway", "blog"), ("verdict", "fail")))] == 0  # from the start
    results = "weighbridge_rollout_results_total"
    assert seen[(results, (("gateway", "shop"), ("result", "rolled_back")))] == 1
    assert not any(labels and ("gateway", "gone") in labels for _, labels in seen)


def test_latest_prefers_the_active_rollout() -> None:
    old_active, newer_done = rollout("shop-1", 1.0), rollout("shop-2", 2.0, "aborted")
    assert latest_by_gateway([old_active, newer_done])["shop"].id == "shop-1"
    assert latest_by_gateway([rollout("shop-1", 1.0, "promoted"), newer_done])["shop"].id == (
        "shop-2"
    )


def test_after_a_rollback_the_weight_is_the_rollbacks() -> None:
    """Issue 10.3: the to-route's weight stayed the step's after a rollback."""
    registry = CollectorRegistry()
    done = rollout("shop-1", 1.0)
    done.step = 1
    done.start_rollback(1000, "failed", "rolled_back", 2.0)
    done.rollback_step = 1
    done.end("rolled_back", "failed", 3.0)
    RolloutMetrics(registry, lambda: ["shop"], lambda: [done])
    key = ("weighbridge_rollout_to_route_weight_ratio", (("gateway", "shop"), ("route", "canary")))
    assert samples(registry)[key] == 0.0


def test_the_fast_path_says_what_the_library_says_and_rebuilds_only_what_changed() -> None:
    """`Metrics.render` serves the rollout lines ready-made, equal to prometheus_client's own
    exposition; a scrape rebuilds only the gateways whose rollout changed (issue 11)."""
    from controller.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    current = rollout("shop-2", 2.0)
    names = ["shop", *(f"g{i}" for i in range(50))]
    table = RolloutMetrics(metrics.registry, lambda: names, lambda: [current])
    metrics.add_table(table)
    built: list[str] = []
    original = table._build

    def counting(name: str, latest: Rollout | None) -> None:
        built.append(name)
        original(name, latest)

    table._build = counting  # type: ignore[method-assign]
    assert sorted(metrics.render().splitlines()) == sorted(
        generate_latest(metrics.registry).splitlines()
    )
    assert len(built) == len(names)
    built.clear()
    metrics.render()
    assert built == []  # nothing changed: nothing rebuilt
    current.step = 1
    table.evaluated("g7", "pass")
    text = metrics.render().decode()
    assert sorted(built) == ["g7", "shop"]
    assert 'weighbridge_rollout_step{gateway="shop"} 1.0' in text
    names.remove("g3")
    assert 'gateway="g3"' not in metrics.render().decode()
