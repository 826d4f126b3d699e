"""Automated rollouts on a real controller, HAProxy and backends whose errors and latency the
tests set: promotion step by step, automatic rollback on errors and on latency, holding on no
data, pause/abort/promote, kill -9 and resume, webhooks, and the dashboard's Rollout row.

Intervals are short (0.5–1 s) and windows need ~50 responses, so each rollout takes seconds.
Shares per step are checked on the requests the test sent between a step's start (its weights
read back from HAProxy) and the next step's `step_applying` event, with exact binomial bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.conftest import gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.stack import Stack, running_stack
from tests.support.stats import assert_share
from tests.support.traffic import LoadReport, SteadyLoad, send

pytestmark = pytest.mark.haproxy

ROOT = Path(__file__).resolve().parents[2]
CANARIES = [f"c{i}" for i in range(1, 9)]
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")
RATE = 300.0
# the share of a step is counted on requests sent this long before the next step's change
# at the latest: a request sent just before a map swap may be routed just after it
SWAP_MARGIN = 0.05


@pytest.fixture
def healthy(backends: BackendProcess) -> Iterator[BackendProcess]:
    """Canary instances answer quickly and without errors before and after each test."""
    for name in CANARIES:
        backends.set_behaviour(name, error_rate=0.0, latency=0.0)
    yield backends
    for name in CANARIES:
        backends.set_behaviour(name, error_rate=0.0, latency=0.0)


@pytest.fixture
def stack(healthy: BackendProcess, short_tmp: Path) -> Iterator[Stack]:
    """shop: stable ×4 at 100 %, canary ×8 at 0 %."""
    with running_stack(short_tmp, shop_config(healthy, "100%", "0%")) as running:
        yield running


def spec(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gateway": "shop",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": ["10%", "25%", "50%", "100%"]},
        "interval": 0.5,
        # a healthy canary answers in ms; 1 s tolerates a loaded machine without hiding a hang
        "checks": {"success_rate": "99%", "max_response_ms": 1000, "min_requests": 50},
    }
    body.update(overrides)
    return body


async def api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    """The API from a thread: the event loop keeps driving the test's traffic meanwhile."""
    response = await asyncio.to_thread(stack.request, method, f"/api/v1{path}", body)
    assert response.status < 400, (response.status, response.body)
    return response.body


async def start(stack: Stack, body: dict[str, Any]) -> str:
    created = await api(stack, "POST", "/rollouts", body)
    rollout_id: str = created["id"]
    return rollout_id


async def until(
    stack: Stack,
    rollout_id: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Poll the rollout until `check` holds (deadline: `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = await api(stack, "GET", f"/rollouts/{rollout_id}")
        if check(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {json.dumps(view)[:3000]}")
        await asyncio.sleep(0.05)  # poll interval


async def finished(stack: Stack, rollout_id: str, timeout: float = 40) -> dict[str, Any]:
    return await until(stack, rollout_id, lambda v: v["phase"] in TERMINAL, timeout, "the end")


def events(view: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [event for event in view["events"] if event["kind"] == kind]


def verdicts(view: dict[str, Any]) -> list[str]:
    """Every evaluation's verdict in order (a repeated event counts as often as it happened)."""
    return [e["message"].split(":")[0] for e in events(view, "check") for _ in range(e["count"])]


def applied(stack: Stack) -> dict[str, str]:
    routes = stack.request("GET", "/api/v1/gateways/shop/status").body["routes"]
    return {name: route["applied_weight"] for name, route in routes.items()}


async def cli(stack: Stack, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "rollout",
        *args,
        "--api",
        f"127.0.0.1:{stack.api_port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def no_canary_traffic_after(stack: Stack, backends: BackendProcess) -> None:
    """Requests sent now reach stable only, and no canary instance counts a hit."""
    before = backends.hits()
    result = await send(gateway_url(stack), 400, concurrency=8)
    assert result.routes == {"stable": 400}, result.routes
    after = backends.hits()
    assert all(after.get(c, 0) == before.get(c, 0) for c in CANARIES)


def step_shares(view: dict[str, Any], report: LoadReport) -> list[tuple[int, int, int, float]]:
    """(step, canary count, requests, expected share) per step, from the load's outcomes."""
    shares = []
    for step, (begin, end) in enumerate(step_windows(view), start=1):
        inside = [o for o in report.outcomes if begin <= o.sent_at <= end and o.route]
        canary = sum(1 for o in inside if o.route == "canary")
        weight = float(view["plan"][step - 1]["weights"]["canary"].rstrip("%")) / 100
        shares.append((step, canary, len(inside), weight))
    return shares


def step_windows(view: dict[str, Any]) -> list[tuple[float, float]]:
    """Each step's requests on the test's monotonic clock: sent from the step's start (its
    weights read back) until `SWAP_MARGIN` before the next step's change (or the end)."""
    offset = time.time() - time.monotonic()
    starts = [e["at"] - offset for e in events(view, "step_started")]
    ends = [e["at"] - offset for e in events(view, "step_applying")][1:]
    ends.append(events(view, "promoted")[0]["at"] - offset)
    return [(begin, end - SWAP_MARGIN) for begin, end in zip(starts, ends, strict=True)]


async def test_refusals_name_the_problem_and_dry_run_starts_nothing(stack: Stack) -> None:
    def post(body: Any, path: str = "") -> tuple[int, Any]:
        response = stack.request("POST", f"/api/v1/rollouts{path}", body)
        return response.status, response.body

    status, body = await asyncio.to_thread(post, spec(strategy={"type": "canary"}))
    assert status == 400 and body["problems"][0]["field"].startswith("strategy")
    status, body = await asyncio.to_thread(post, spec(gateway="nope"))
    assert status == 404 and body["problems"] == [{"field": "gateway", "message": body["error"]}]
    status, body = await asyncio.to_thread(post, spec(to_route="nope"))
    assert status == 404 and body["problems"][0]["field"] == "to_route"
    status, body = await asyncio.to_thread(post, spec(strategy={"type": "ab", "requests": 10}))
    assert status == 400 and "condition" in body["error"]
    status, plan = await asyncio.to_thread(post, spec(), "?dry_run=true")
    assert status == 200 and [p["weights"]["canary"] for p in plan["plan"]] == [
        "10%",
        "25%",
        "50%",
        "100%",
    ]
    assert (await api(stack, "GET", "/rollouts"))["rollouts"] == []
    rollout_id = await start(stack, spec(checks={"min_requests": 50, "max_inconclusive": None}))
    status, body = await asyncio.to_thread(post, spec())
    assert status == 409 and rollout_id in body["error"]  # one active rollout per gateway
    status, body = await asyncio.to_thread(post, None, f"/{rollout_id}/jump")
    assert status == 404
    await api(stack, "POST", f"/rollouts/{rollout_id}/abort")
    await finished(stack, rollout_id)
    status, body = await asyncio.to_thread(post, None, f"/{rollout_id}/resume")
    assert status == 409 and "aborted" in body["error"]
    listed = await api(stack, "GET", "/rollouts?gateway=shop")
    assert [r["id"] for r in listed["rollouts"]] == [rollout_id]
    assert (await api(stack, "GET", "/rollouts?active=true"))["rollouts"] == []


async def test_healthy_canary_is_promoted_step_by_step_and_the_cli_exits_0(
    stack: Stack, healthy: BackendProcess
) -> None:
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60) as load:
        process = await cli(
            stack,
            "start",
            "shop",
            "--from",
            "stable",
            "--to",
            "canary",
            "--steps",
            "10,25,50,100",
            "--interval",
            "0.5",
            "--min-requests",
            "50",
            "--success-rate",
            "99",
            "--max-response-ms",
            "100",
            "--wait",
            "--json",
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    final = json.loads(stdout)
    assert final["phase"] == "promoted"
    assert "step started" in stderr.decode()  # progress lines for the CI log
    assert stderr.decode().startswith(f"rollout {final['id']} started")  # the id comes first
    view = await api(stack, "GET", f"/rollouts/{final['id']}")
    started = [e["step"] for e in events(view, "step_started")]
    assert started == [1, 2, 3, 4]
    assert view["failed_checks"] == 0
    for step, canary, total, weight in step_shares(view, load.report):
        assert_share(canary, total, weight, label=f"step {step} ({weight:.0%})")
    assert applied(stack) == {"stable": "0%", "canary": "100%"}
    load.report.assert_no_failures(min_requests=500)


@pytest.mark.parametrize("errors", [0.0, 1.0], ids=["healthy", "failing"])
async def test_the_ci_example_promotes_a_healthy_canary_and_rolls_back_a_failing_one(
    stack: Stack, healthy: BackendProcess, short_tmp: Path, errors: float
) -> None:
    """Issue 10.3: after a rollback the script printed the step's weights (90/10)."""
    canaries = [b for b in healthy.backends if b.route == "canary"][:2]
    for backend in canaries:
        healthy.set_behaviour(backend.instance, error_rate=errors)
    env = {
        "PATH": os.environ["PATH"],
        "WEIGHBRIDGE_API": f"127.0.0.1:{stack.api_port}",
        "WEIGHBRIDGE_CLI": f"{sys.executable} -m controller",
        "NEW_INSTANCES": " ".join(b.address for b in canaries),
        "STEPS": "50,100",
        "INTERVAL": "0.5",
        "MIN_REQUESTS": "50",
        "RESULT_FILE": str(short_tmp / "result.json"),
    }
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60):
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(ROOT / "examples/ci-rollout.sh"),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode()
    result = json.loads((short_tmp / "result.json").read_text())
    said = text.index(f"rollout {result['id']} started")  # abortable from the log
    assert said < text.index("step started") and "weighbridge rollout abort" in text
    if errors:
        assert process.returncode == 1, text
        assert result["phase"] == "rolled_back"
        assert "(stable 100%, canary 0%)" in text and "at step 1/2" in text
        assert applied(stack) == {"stable": "100%", "canary": "0%"}
    else:
        assert process.returncode == 0, text
        assert result["phase"] == "promoted" and "(stable 0%, canary 100%)" in text
        assert applied(stack) == {"stable": "0%", "canary": "100%"}


async def test_canary_with_5_percent_errors_is_rolled_back_and_the_cli_exits_nonzero(
    stack: Stack, healthy: BackendProcess
) -> None:
    # Each instance fails exactly every 20th request, so a window needs 200 requests (25 per
    # instance) to see 5 %; 200 is also about what telling 5 % from 1 % takes statistically.
    for name in CANARIES:
        healthy.set_behaviour(name, error_rate=0.05)
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60):
        process = await cli(
            stack,
            "start",
            "shop",
            "--from",
            "stable",
            "--to",
            "canary",
            "--steps",
            "25,50,100",
            "--interval",
            "0.5",
            "--min-requests",
            "200",
            "--success-rate",
            "99",
            "--failure-threshold",
            "2",
            "--wait",
            "--json",
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, stderr.decode()
    view = json.loads(stdout)
    assert view["phase"] == "rolled_back"
    # the rollback starts at the second failed check, not one evaluation later
    checks = verdicts(view)
    # (repeats coalesce into an earlier event: the last evaluation is the latest one, by time)
    last = max(events(view, "check"), key=lambda e: e["last_at"] or e["at"])
    assert checks.count("fail") == 2 == view["failed_checks"], checks
    assert last["message"].startswith("fail") and view["last_check"]["verdict"] == "fail", checks
    assert "pass" not in checks, checks
    kinds = [e["kind"] for e in view["events"]]
    last_check = len(kinds) - 1 - kinds[::-1].index("check")
    assert kinds[last_check + 1] == "rollback_started", kinds
    assert "success rate" in events(view, "rollback_started")[0]["message"]
    assert view["weights"] == {"stable": "100%", "canary": "0%"}  # HAProxy's, not the step's
    assert [e["step"] for e in events(view, "step_started")] == [1]
    assert applied(stack) == {"stable": "100%", "canary": "0%"}
    await no_canary_traffic_after(stack, healthy)


async def test_slow_canary_is_rolled_back(stack: Stack, healthy: BackendProcess) -> None:
    for name in CANARIES:
        healthy.set_behaviour(name, latency=0.15)
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60):
        rollout_id = await start(
            stack, spec(checks={"max_response_ms": 60, "min_requests": 50, "failure_threshold": 1})
        )
        view = await finished(stack, rollout_id)
    assert view["phase"] == "rolled_back", view["reason"]
    [check] = [r for r in view["last_check"]["results"] if r["name"] == "response_time"]
    assert check["result"] == "fail" and check["value"] >= 140, check
    await no_canary_traffic_after(stack, healthy)


async def test_no_traffic_holds_inconclusive_then_traffic_lets_it_go_on(stack: Stack) -> None:
    rollout_id = await start(stack, spec(checks={"min_requests": 50, "max_inconclusive": None}))
    held = await until(
        stack,
        rollout_id,
        lambda v: len(verdicts(v)) >= 4,
        20,
        "four evaluations without traffic",
    )
    assert held["phase"] == "progressing" and held["step"] == 1
    assert set(verdicts(held)) == {"inconclusive"}
    assert len(events(held, "check")) == 1  # the same evaluation, counted, not repeated
    assert held["failed_checks"] == 0
    assert "traffic: the window has 0 of the 50 responses" in held["waiting_for"]
    assert applied(stack) == {"stable": "90%", "canary": "10%"}  # held at step 1
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60):
        view = await finished(stack, rollout_id)
    assert view["phase"] == "promoted"
    assert [e["step"] for e in events(view, "step_started")] == [1, 2, 3, 4]


async def test_abort_while_paused_rolls_back_and_promote_while_paused_completes(
    stack: Stack, healthy: BackendProcess
) -> None:
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60) as load:
        first = await start(stack, spec())
        await until(stack, first, lambda v: v["step"] == 1, 10, "step 1")
        paused = await api(stack, "POST", f"/rollouts/{first}/pause")
        assert paused["phase"] == "paused"
        seen = len(load.report.outcomes)
        await load.wait_until(lambda r: len(r.outcomes) > seen + 600)  # two seconds of traffic
        held = await api(stack, "GET", f"/rollouts/{first}")
        assert held["phase"] == "paused" and held["step"] == 1
        assert applied(stack) == {"stable": "90%", "canary": "10%"}
        aborted = await api(stack, "POST", f"/rollouts/{first}/abort")
        assert aborted["phase"] in ("rolling_back", "aborted")
        view = await finished(stack, first)
        assert view["phase"] == "aborted"
        assert applied(stack) == {"stable": "100%", "canary": "0%"}
        assert view["weights"] == {"stable": "100%", "canary": "0%"}  # not step 1's 90/10
        assert view["weights_source"] == "haproxy"

        second = await start(stack, spec())
        await until(stack, second, lambda v: v["step"] == 1, 10, "step 1")
        await api(stack, "POST", f"/rollouts/{second}/pause")
        promoted = await api(stack, "POST", f"/rollouts/{second}/promote")
        assert promoted["phase"] == "promoted" and promoted["step"] == 4
        assert applied(stack) == {"stable": "0%", "canary": "100%"}
        refused = await asyncio.to_thread(stack.request, "POST", f"/api/v1/rollouts/{second}/abort")
        assert refused.status == 409
    kinds = [e["kind"] for e in view["events"]]
    assert kinds.index("paused") < kinds.index("rollback_started") < kinds.index("aborted")
    assert view["reason"] == "aborted by request"


async def test_kill_9_during_step_3_resumes_at_step_3_without_repeating_or_skipping(
    stack: Stack,
) -> None:
    config_file = stack.state_dir.parent / "weighbridge.yaml"
    steps = ["10%", "25%", "40%", "60%", "100%"]
    body = spec(strategy={"type": "canary", "steps": steps}, interval=1.0)
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=90) as load:
        rollout_id = await start(stack, body)
        await until(
            stack,
            rollout_id,
            lambda v: v["step"] == 3 and v["stage"] == "analysing",
            30,
            "step 3",
        )
        stack.kill_controller()  # SIGKILL, a second before step 3's first evaluation
        live = stack.admin(f"show map {stack.state_dir}/maps/shop.map")
        ranges = sorted(line.split()[1] for line in live.splitlines() if line.startswith("0x"))
        assert ranges == ["0:5999", "6000:9999"], live  # HAProxy keeps step 3: 60/40
        seen = len(load.report.outcomes)
        await load.wait_until(lambda r: len(r.outcomes) > seen + 100)  # served meanwhile
        await asyncio.to_thread(stack.start_controller, config_file)
        view = await finished(stack, rollout_id, timeout=60)
    assert view["phase"] == "promoted", view["reason"]
    started = [e["step"] for e in events(view, "step_started")]
    assert started == [1, 2, 3, 4, 5], started
    assert [e["step"] for e in events(view, "step_applying")] == [1, 2, 3, 4, 5]
    [resumed] = events(view, "resumed")
    assert resumed["step"] == 3 and "after a restart" in resumed["message"]
    kinds = [(e["kind"], e["step"]) for e in view["events"]]
    assert kinds.index(("step_started", 3)) < kinds.index(("resumed", 3))
    assert kinds.index(("resumed", 3)) < kinds.index(("step_applying", 4))
    load.report.assert_no_failures(min_requests=1000)


async def test_ab_rollout_sets_the_condition_strength_live_and_abort_restores_it(
    healthy: BackendProcess, short_tmp: Path
) -> None:
    config = shop_config(healthy, "100%", "0%")
    canary = config["gateways"]["shop"]["routes"]["canary"]
    canary.update(condition="has header x-beta", condition_strength="0%")
    body = spec(
        strategy={"type": "ab", "condition_strength": "50%", "requests": 100},
        checks={"success_rate": "99%", "min_requests": 50},
    )
    with running_stack(short_tmp, config) as stack:
        url = gateway_url(stack)
        async with SteadyLoad(url, rate=RATE, max_duration=60, headers={"x-beta": "1"}) as load:
            rollout_id = await start(stack, body)
            view = await finished(stack, rollout_id)
        assert view["phase"] == "promoted", view["reason"]
        assert view["condition_strength"] == "50%"
        [step] = step_windows(view)
        inside = [o for o in load.report.outcomes if step[0] <= o.sent_at <= step[1] and o.route]
        assert_share(sum(o.route == "canary" for o in inside), len(inside), 0.5, label="A/B")
        status = await api(stack, "GET", "/gateways/shop/status")
        assert status["routes"]["canary"]["applied_condition_strength"] == "50%"
        assert status["routes"]["canary"]["applied_weight"] == "0%"  # weights untouched

        second = await start(stack, spec(strategy={"type": "ab", "duration": 60}))
        await until(stack, second, lambda v: v["step"] == 1, 10, "the A/B step")
        status = await api(stack, "GET", "/gateways/shop/status")
        assert status["routes"]["canary"]["applied_condition_strength"] == "100%"
        await api(stack, "POST", f"/rollouts/{second}/abort")
        assert (await finished(stack, second))["phase"] == "aborted"
        status = await api(stack, "GET", "/gateways/shop/status")
        assert status["routes"]["canary"]["applied_condition_strength"] == "50%"


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A tiny receiver: `/pre` answers `state["pre_status"]`, `/rollback` 200; calls kept."""
    state: dict[str, Any] = {"pre_status": 200, "pre": [], "rollback": []}

    async def pre(request: web.Request) -> web.Response:
        state["pre"].append(await request.json())
        return web.Response(status=state["pre_status"])

    async def rollback(request: web.Request) -> web.Response:
        state["rollback"].append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/pre", pre)
    app.router.add_post("/rollback", rollback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


async def test_webhook_500_blocks_the_next_step_and_the_rollback_webhook_is_called(
    stack: Stack, healthy: BackendProcess
) -> None:
    async with (
        webhook_receiver() as (url, hooks),
        SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60),
    ):
        webhooks = {
            "pre_step": [{"url": f"{url}/pre", "timeout": 1, "retries": 1}],
            "rollback": [{"url": f"{url}/rollback", "timeout": 1, "retries": 1}],
        }
        rollout_id = await start(stack, spec(webhooks=webhooks))
        await until(stack, rollout_id, lambda v: v["step"] == 1, 10, "step 1")
        hooks["pre_status"] = 500
        blocked = await until(
            stack,
            rollout_id,
            lambda v: sum(1 for p in hooks["pre"] if p["next_step"] == 2) >= 4,
            20,
            "two blocked rounds of the step 2 webhook (2 attempts each)",
        )
        assert blocked["step"] == 1 and "HTTP 500" in (blocked["blocked"] or ""), blocked
        assert applied(stack) == {"stable": "90%", "canary": "10%"}
        hooks["pre_status"] = 200
        await until(stack, rollout_id, lambda v: v["step"] == 2, 10, "step 2 once the hook says go")
        for name in CANARIES:
            healthy.set_behaviour(name, error_rate=0.5)
        view = await finished(stack, rollout_id)
        assert view["phase"] == "rolled_back"
        await until(stack, rollout_id, lambda v: bool(hooks["rollback"]), 10, "rollback hook")
    [notice] = hooks["rollback"]
    assert notice["event"] == "rollback" and notice["rollout"] == rollout_id
    assert "failed checks" in notice["reason"]
    assert [p["next_step"] for p in hooks["pre"]][:1] == [1]


async def test_the_dashboard_rollout_row_answers_during_a_rollout_with_a_prometheus_check(
    stack: Stack, short_tmp: Path
) -> None:
    from tests.integration.test_prometheus import (
        NODE,
        ROLLOUT_ROW,
        dashboards,
        fill,
        panel_queries,
        running_prometheus,
        scrape_config,
    )

    started = time.time()
    rules = ROOT / "deploy/prometheus-rules.yml"
    with running_prometheus(short_tmp, scrape_config(stack, rules)) as prometheus:
        prometheus.wait_for('up{job="haproxy"} == 1', "Prometheus to scrape HAProxy")
        prometheus.wait_for('weighbridge_rollout_phase{phase="none"} == 1', "rollout metrics")
        five_xx = (
            'sum(increase(haproxy_backend_http_responses_total{proxy="$proxy", code="5xx"}'
            "[$window])) / sum(increase(haproxy_backend_http_responses_total"
            '{proxy="$proxy"}[$window]))'
        )
        body = spec(
            strategy={"type": "canary", "steps": ["25%", "100%"]},
            interval=3.0,
            checks={
                "min_requests": 50,
                "prometheus_url": prometheus.url,
                "prometheus": [{"name": "errors", "query": five_xx, "max": 0.01}],
            },
        )
        async with SteadyLoad(gateway_url(stack), rate=RATE / 2, max_duration=60):
            rollout_id = await start(stack, body)
            view = await finished(stack, rollout_id, timeout=50)
        assert view["phase"] == "promoted", view["reason"]
        [errors] = [r for r in view["last_check"]["results"] if r["name"] == "errors"]
        assert errors["value"] == 0.0 and errors["result"] == "pass"
        prometheus.wait_for('weighbridge_rollout_phase{phase="promoted"} == 1', "the result")
        at = time.time()
        window = f"{int(at - started) + 5}s"
        canary = dashboards()["canary"]
        queries = list(panel_queries(canary, rows=[ROLLOUT_ROW]))
        assert len(queries) >= 10  # the row's panels and the step annotation
        empty = [
            f"{label}: {expr}"
            for label, expr in queries
            if not prometheus.query(
                fill(expr, window, {"node": NODE, "gateway": "shop", "route": "canary"}), at
            )
        ]
        assert not empty, "Rollout row queries without data:\n" + "\n".join(empty)
        steps = prometheus.query(
            f"max_over_time(weighbridge_rollout_step{{gateway='shop'}}[{window}])", at
        )
        assert float(steps[0]["value"][1]) == 2.0
