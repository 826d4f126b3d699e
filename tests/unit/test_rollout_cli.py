"""`weighbridge rollout`: the spec built from flags, the live display, exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from controller.cli import build_parser
from controller.cli.follow import EXIT_CODES, render
from controller.cli.rollout import spec_from_args
from controller.rollouts.spec import RolloutSpec, plan_steps
from controller.rollouts.state import Origin, Rollout
from controller.rollouts.view import public_view


def parse(*argv: str) -> object:
    return build_parser().parse_args(["rollout", *argv])


def test_flags_make_a_valid_spec() -> None:
    args = parse(
        "start",
        "shop",
        "--from",
        "stable",
        "--to",
        "canary",
        "--steps",
        "1,5,10,25,50,100",
        "--interval",
        "30",
        "--success-rate",
        "99.5",
        "--max-response-ms",
        "250",
        "--pre-step-webhook",
        "http://127.0.0.1:1/pre",
        "--rollback-steps",
        "3",
    )
    spec = RolloutSpec.model_validate(spec_from_args(args))  # type: ignore[arg-type]
    assert [s.weight for s in plan_steps(spec.strategy)] == [100, 500, 1000, 2500, 5000, 10000]
    assert spec.checks.success_rate == 9950 and spec.checks.max_response_ms == 250
    assert spec.webhooks.pre_step[0].url == "http://127.0.0.1:1/pre"
    assert spec.rollback.steps == 3 and spec.interval == 30


@pytest.mark.parametrize(
    ("flags", "strategy"),
    [
        (["--step-weight", "10", "--max-weight", "50"], {"type": "canary", "step_weight": "10%"}),
        (["--strategy", "bluegreen", "--preview", "2"], {"preview_weight": "2%"}),
        (
            ["--strategy", "ab", "--strength", "50", "--requests", "1000", "--then", "50,100"],
            {"condition_strength": "50%", "requests": 1000, "then_weights": ["50%", "100%"]},
        ),
    ],
)
def test_strategies_from_flags(flags: list[str], strategy: dict[str, object]) -> None:
    args = parse("start", "shop", "--from", "a", "--to", "b", *flags)
    built = spec_from_args(args)  # type: ignore[arg-type]
    assert strategy.items() <= built["strategy"].items()
    RolloutSpec.model_validate(built)


def test_a_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(
        "gateway: shop\nfrom_route: stable\nto_route: canary\n"
        "strategy: {type: bluegreen}\ninterval: 10\n"
    )
    built = spec_from_args(parse("start", "--file", str(path)))  # type: ignore[arg-type]
    assert RolloutSpec.model_validate(built).strategy.type == "bluegreen"


def test_defaults_check_the_success_rate_and_no_checks_must_be_said() -> None:
    """Issue 10.1: the synopsis read as if 99 were the default; now it is."""
    args = parse("start", "shop", "--from", "stable", "--to", "canary")
    spec = RolloutSpec.model_validate(spec_from_args(args))  # type: ignore[arg-type]
    assert spec.checked is not None and spec.checked.success_rate == 9900
    unchecked = parse("start", "shop", "--from", "stable", "--to", "canary", "--no-checks")
    assert RolloutSpec.model_validate(spec_from_args(unchecked)).checked is None  # type: ignore[arg-type]
    zero = parse("start", "shop", "--from", "a", "--to", "b", "--success-rate", "0")
    with pytest.raises(ValueError, match="--no-checks"):
        RolloutSpec.model_validate(spec_from_args(zero))  # type: ignore[arg-type]


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("start", "--help")
    text = " ".join(capsys.readouterr().out.split())
    for expected in (
        "success rate ≥ 99%",
        "(default: 99)",
        "(default: 100)",
        "(default: 60.0)",
        "(default: 1,5,10,25,50,100)",
        "--no-checks",
        "(default: 127.0.0.1:9900)",
    ):
        assert expected in text, expected


def test_exit_codes_say_how_it_ended() -> None:
    assert EXIT_CODES == {"promoted": 0, "rolled_back": 1, "aborted": 1, "failed": 2}


def rollout_at_step_1(**checks: object) -> Rollout:
    spec = RolloutSpec.model_validate(
        {
            "gateway": "shop",
            "from_route": "stable",
            "to_route": "canary",
            "strategy": {"type": "canary", "steps": ["10%", "100%"]},
            "checks": {"min_requests": 10, **checks},
        }
    )
    return Rollout(
        id="shop-1",
        spec=spec,
        created_at=0.0,
        origin=Origin(from_weight=10000, to_weight=0),
        plan=plan_steps(spec.strategy),
        step=1,
        stage="analysing",
    )


def test_the_live_display_shows_step_weights_checks_and_time_to_the_next_check() -> None:
    from controller.rollouts.checks import Window, evaluate

    rollout = rollout_at_step_1(success_rate="99%")
    rollout.last_check = evaluate(rollout.spec.checked, Window(100, 2, 1.0, 5), at=0.0, step=1)
    rollout.record(1.0, "step_started", "stable 90%, canary 10%")
    console = Console(file=io.StringIO(), width=120)
    console.print(render(public_view(rollout, next_check_at=112.0), now=100.0))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for expected in (
        "step 1/2",
        "stable 90%, canary 10%",
        "98.00%",
        "≥ 99.00%",
        "next check in 12.0 s",
        "step started",
        "success rate",
    ):
        assert expected in text, (expected, text)


def test_events_tables_and_lines_say_rates_and_phases_the_same_way() -> None:
    """Issue 10.10: events said `success_rate 0 < 0.99`, tables 0.00 %; `rolled_back` in text."""
    from controller.cli.follow import _result
    from controller.rollouts.checks import Window, evaluate
    from controller.rollouts.text import evaluation_text, event_line

    rollout = rollout_at_step_1()
    rollout.last_check = evaluate(rollout.spec.checked, Window(255, 255, 1.0, 5), at=0.0, step=1)
    summary = evaluation_text(rollout.last_check.model_dump())
    assert summary == "fail: requests 255 ≥ 10; success rate 0.00% < 99.00%"
    rollout.record(1.0, "check", summary)
    rollout.end("rolled_back", f"2 failed checks: {summary}", 2.0)
    view = public_view(rollout)
    assert view["phase"] == "rolled_back"  # JSON keeps the identifier
    console = Console(file=io.StringIO(), width=200)
    console.print(render(view, now=0.0))
    table = console.file.getvalue()  # type: ignore[attr-defined]
    for shown in ("0.00%", "≥ 99.00%", "success rate", "rolled back"):
        assert shown in table, (shown, table)
    assert "rolled_back" not in table and "success_rate" not in table
    assert "step 1 rolled back: 2 failed checks: fail: " in event_line(view["events"][-1])
    args = build_parser().parse_args(["rollout", "status", "shop-1"])
    out = Console(file=io.StringIO(), width=200)
    _result(args, out, ["shop-1"], {"shop-1": view}, False)
    assert out.file.getvalue().startswith("rollout shop-1 rolled back: 2 failed checks")  # type: ignore[attr-defined]
