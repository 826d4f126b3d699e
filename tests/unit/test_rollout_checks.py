"""Verdicts from counter deltas: no data never fails nor passes; any failure fails."""

from __future__ import annotations

from controller.rollouts.checks import Counters, Window, evaluate, measure, summarise
from controller.rollouts.model import Checks

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
    assert summarise(slow) == "fail: requests 100; success_rate 1; response_time 201 > 200"


def test_prometheus_checks_fail_only_on_a_number() -> None:
    checks = Checks.model_validate(
        {
            "min_requests": 10,
            "prometheus_url": "http://127.0.0.1:9090",
            "prometheus": [
                {"name": "p99", "query": "q", "max": 0.5},
                {"name": "apdex", "query": "q", "min": 0.9},
            ],
        }
    )
    window = Window(100, 0, 1.0, 5)
    assert (
        evaluate(checks, window, at=0, step=1, prometheus={"p99": 0.2, "apdex": 0.95}).verdict
        == "pass"
    )
    assert (
        evaluate(checks, window, at=0, step=1, prometheus={"p99": 0.7, "apdex": 0.95}).verdict
        == "fail"
    )
    missing = evaluate(checks, window, at=0, step=1, prometheus={"p99": None, "apdex": 0.95})
    assert missing.verdict == "inconclusive"
    # a failure elsewhere still fails: no data on one check does not protect a bad canary
    both = evaluate(checks, window, at=0, step=1, prometheus={"p99": None, "apdex": 0.5})
    assert both.verdict == "fail"
