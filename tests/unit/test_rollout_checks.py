"""Verdicts from counter deltas: no data never fails nor passes; any failure fails."""

from __future__ import annotations

from controller.rollouts.checks import Answer, Counters, Window, evaluate, measure
from controller.rollouts.spec import Checks
from controller.rollouts.state import Evaluation
from controller.rollouts.text import evaluation_text


def text(evaluation: Evaluation) -> str:
    return evaluation_text(evaluation.model_dump())


CHECKS = Checks.model_validate({"success_rate": "99%", "max_response_ms": 200, "min_requests": 50})


def test_counters_from_a_show_stat_row() -> None:
    row = {
        "pxname": "wb.shop.b2",
        "svname": "BACKEND",
        "hrsp_1xx": "0",
        "hrsp_2xx": "90",
        "hrsp_3xx": "3",
        "hrsp_4xx": "2",
        "hrsp_5xx": "5",
        "hrsp_other": "",
        "rtime": "12",
        "ttime": "40",
    }
    assert Counters.from_stat("wb.shop.b2", row) == Counters("wb.shop.b2", 100, 5, 12)


def test_a_window_is_the_difference_and_a_restart_voids_it() -> None:
    before = Counters("b", 100, 5, 10)
    assert measure(before, Counters("b", 250, 6, 12), 2.0) == Window(150, 1, 2.0, 12)
    assert measure(before, Counters("b", 20, 0, 12), 2.0) is None  # HAProxy reloaded
    assert measure(before, Counters("other", 250, 6, 12), 2.0) is None  # the route moved


def test_too_few_requests_is_inconclusive_even_when_all_failed() -> None:
    result = evaluate(CHECKS, Window(49, 49, 1.0, 5000), at=0, step=1)
    assert result.verdict == "inconclusive"
    assert {r.result for r in result.results} == {"inconclusive"}


def test_no_requests_at_all_is_inconclusive() -> None:
    assert evaluate(CHECKS, Window(0, 0, 60.0, 0), at=0, step=1).verdict == "inconclusive"


def test_success_rate_and_latency() -> None:
    assert evaluate(CHECKS, Window(100, 1, 1.0, 20), at=0, step=1).verdict == "pass"
    failed = evaluate(CHECKS, Window(100, 2, 1.0, 20), at=0, step=1)
    assert failed.verdict == "fail"
    [rate] = [r for r in failed.results if r.name == "success_rate"]
    assert rate.value == 0.98 and rate.threshold == 0.99 and rate.result == "fail"
    slow = evaluate(CHECKS, Window(100, 0, 1.0, 201), at=0, step=1)
    assert slow.verdict == "fail"
    assert text(slow) == (
        "fail: requests 100 ≥ 50; success rate 100.00% ≥ 99.00%; response time 201 ms > 200 ms"
    )
    assert text(failed).startswith("fail: requests 100 ≥ 50; success rate 98.00% < 99.00%")


def test_prometheus_checks_fail_only_on_a_number() -> None:
    checks = Checks.model_validate(
        {
            "success_rate": None,
            "min_requests": 10,
            "prometheus_url": "http://127.0.0.1:9090",
            "prometheus": [
                {"name": "p99", "query": "q", "max": 0.5},
                {"name": "apdex", "query": "q", "min": 0.9},
            ],
        }
    )
    window = Window(100, 0, 1.0, 5)
    assert evaluate(checks, window, at=0, step=1, prometheus=answers(0.2, 0.95)).verdict == "pass"
    assert evaluate(checks, window, at=0, step=1, prometheus=answers(0.7, 0.95)).verdict == "fail"
    missing = evaluate(checks, window, at=0, step=1, prometheus=answers(None, 0.95))
    assert missing.verdict == "inconclusive"
    assert "p99 no data (Prometheus: HTTP 500)" in text(missing)
    # a failure elsewhere still fails: no data on one check does not protect a bad canary
    both = evaluate(checks, window, at=0, step=1, prometheus=answers(None, 0.5))
    assert both.verdict == "fail"


def answers(p99: float | None, apdex: float | None) -> dict[str, Answer]:
    return {
        "p99": Answer(p99, "" if p99 is not None else "Prometheus: HTTP 500"),
        "apdex": Answer(apdex),
    }


def test_default_checks_are_a_99_percent_success_rate() -> None:
    """Issue 10.1: a canary failing every request is a failed check with the defaults."""
    checks = Checks()
    assert checks.success_rate == 9900 and checks.effective
    all_failed = evaluate(checks, Window(255, 255, 3.0, 5), at=0, step=1)
    assert all_failed.verdict == "fail"
    assert "success rate 0.00% < 99.00%" in text(all_failed)


def test_without_checks_every_window_passes() -> None:
    """`checks: none`, asked for by name: even no traffic and all errors pass."""
    for window in (Window(0, 0, 1.0, 0), Window(100, 100, 1.0, 5)):
        assert evaluate(None, window, at=0, step=1).verdict == "pass"
