"""Rollouts as people use them, with the real `weighbridge` CLI against a real controller,
HAProxy and backends: safe defaults, `status --wait` semantics and exit codes, ids first,
Ctrl-C, dry runs, hints, deleted gateways, and outbound calls kept to the allow-list.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import gateway_url, shop_config
from tests.integration.test_rollouts import (  # the fixtures too: `healthy`, `stack`
    CANARIES,
    RATE,
    api,
    applied,
    cli,
    events,
    finished,
    healthy,
    no_canary_traffic_after,
    spec,
    stack,
    start,
    until,
)
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack

__all__ = ["healthy", "stack"]  # fixtures used here
from tests.support.traffic import SteadyLoad

pytestmark = pytest.mark.haproxy


@pytest.fixture
def broken(healthy: BackendProcess) -> BackendProcess:
    """Every canary instance answers 500 to everything (`healthy` restores them)."""
    for name in CANARIES:
        healthy.set_behaviour(name, error_rate=1.0)
    return healthy


async def run(process: asyncio.subprocess.Process, timeout: float = 60) -> tuple[str, str]:
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return stdout.decode(), stderr.decode()


START = ("start", "shop", "--from", "stable", "--to", "canary")


async def test_a_canary_failing_every_request_is_rolled_back_with_the_defaults(
    stack: Stack, broken: BackendProcess
) -> None:
    """Issue 10.1 (acceptance): no --success-rate, every canary answer a 500 → rolled back,
    exit 1; the id is printed first; the result shows HAProxy's weights (10.3)."""
    async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60):
        process = await cli(
            stack, *START, "--steps", "10,50,100", "--interval", "0.5", "--min-requests", "20",
            "--wait", "--json",
        )  # fmt: skip
        stdout, stderr = await run(process)
    assert process.returncode == 1, stderr
    view = json.loads(stdout)
    assert stderr.splitlines()[0] == f"rollout {view['id']} started: 3 steps"
    assert view["id"] == "shop-1" and view["phase"] == "rolled_back"
    assert "success rate 0.00% < 99.00%" in view["reason"]
    assert view["weights"] == {"stable": "100%", "canary": "0%"}
    assert view["weights_source"] == "haproxy" and view["step_weights"]["canary"] == "10%"
    assert applied(stack) == {"stable": "100%", "canary": "0%"}
    await no_canary_traffic_after(stack, broken)


async def test_haproxys_own_503s_count_as_failures(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """A canary instance nobody listens on: HAProxy answers 503 itself; rolled back. (Its
    checks are off: checked, it would be marked down and the gate would hold the rollout.)"""
    config = shop_config(backends, "100%", "0%")
    canary = config["gateways"]["shop"]["routes"]["canary"]
    canary |= {"instances": [f"127.0.0.1:{free_port()}"], "health_check": "none"}
    with running_stack(short_tmp, config) as stack:
        async with SteadyLoad(gateway_url(stack), rate=RATE, max_duration=60):
            body = spec(checks={"min_requests": 20}, strategy={"type": "canary", "steps": [50]})
            view = await finished(stack, await start(stack, body))
        assert view["phase"] == "rolled_back", view["reason"]
        assert view["last_check"]["errors"] == view["last_check"]["requests"] >= 20
        assert applied(stack) == {"stable": "100%", "canary": "0%"}


async def test_no_effective_check_is_refused_unless_said(stack: Stack) -> None:
    response = await asyncio.to_thread(
        stack.request, "POST", "/api/v1/rollouts", spec(checks={"success_rate": None})
    )
    assert response.status == 400 and response.body["problems"][0]["field"] == "checks"
    assert '"checks": "none"' in response.body["problems"][0]["message"]
    process = await cli(stack, *START, "--success-rate", "0")
    refused, _ = await run(process)
    assert process.returncode == 2 and "--no-checks" in " ".join(refused.split())
    process = await cli(
        stack, *START, "--steps", "50", "--interval", "0.2", "--no-checks", "--wait"
    )
    stdout, stderr = await run(process)  # no traffic at all, and yet:
    assert process.returncode == 0, stderr
    assert "warning: checks: none" in stdout and "rollout shop-1 promoted" in stdout


async def test_status_wait_with_an_id_without_one_and_with_a_filter(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Issue 10.2: `status --wait --json` without an id returned at once, exit 0, while a
    rollout was still progressing."""
    config = shop_config(backends, "100%", "0%")
    config["gateways"]["blog"] = shop_config(backends, "100%", "0%")["gateways"]["shop"]
    with running_stack(short_tmp, config) as stack:
        process = await cli(stack, "status", "--wait")
        _, stderr = await run(process)
        assert process.returncode == 2 and "no active rollout" in stderr
        slow = {"min_requests": 1_000_000, "max_inconclusive": None}
        shop = await start(stack, spec(checks=slow))
        blog = await start(stack, spec(gateway="blog", checks=slow))
        assert (shop, blog) == ("shop-1", "blog-1")
        everything = await cli(stack, "status", "--wait", "--json")
        only_blog = await cli(stack, "status", "--wait", "--json", "--gateway", "blog")
        by_id = await cli(stack, "status", "shop-1", "--wait", "--json")
        timed_out = await cli(stack, "status", "--wait", "--json", "--timeout", "1")
        out, _ = await run(timed_out)
        assert timed_out.returncode == 3
        assert {v["phase"] for v in json.loads(out)["rollouts"]} == {"progressing"}
        await api(stack, "POST", f"/rollouts/{blog}/abort")
        out, _ = await run(only_blog)
        assert only_blog.returncode == 1 and json.loads(out)["rollouts"][0]["id"] == "blog-1"
        assert everything.returncode is None and by_id.returncode is None  # still waiting
        await api(stack, "POST", f"/rollouts/{shop}/promote")
        out, _ = await run(by_id)
        assert by_id.returncode == 0 and json.loads(out)["phase"] == "promoted"
        out, _ = await run(everything)
        assert everything.returncode == 1  # the worst of promoted and aborted
        assert {v["id"]: v["phase"] for v in json.loads(out)["rollouts"]} == {
            "shop-1": "promoted",
            "blog-1": "aborted",
        }


async def test_ctrl_c_on_watch_says_the_rollout_goes_on_and_how_to_stop_it(stack: Stack) -> None:
    process = await cli(stack, *START, "--interval", "0.3", "--min-requests", "1000000", "--watch")
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), 30)
    assert first.decode().startswith("rollout shop-1 started")
    await until(stack, "shop-1", lambda v: v["step"] == 1, 20, "step 1")
    process.send_signal(signal.SIGINT)
    _, stderr = await run(process)
    assert process.returncode == 130, stderr
    said = " ".join(stderr.split())
    assert "rollout shop-1 goes on (progressing, step " in said  # as last polled
    assert f"weighbridge rollout abort shop-1 --api 127.0.0.1:{stack.api_port}" in said
    assert (await api(stack, "GET", "/rollouts/shop-1"))["phase"] == "progressing"
    await api(stack, "POST", "/rollouts/shop-1/abort")


async def test_dry_run_warning_and_inconclusive_hint(stack: Stack) -> None:
    """Issue 10.6: a dry run said "created"; the README plan dropped the canary from 5 % to 1 %
    without a warning; a rollout without traffic sat inconclusive without saying why."""
    await api(stack, "PATCH", "/gateways/shop/weights", {"stable": "95%", "canary": "5%"})
    process = await cli(stack, *START, "--dry-run")
    stdout, _ = await run(process)
    said = " ".join(stdout.split())
    assert process.returncode == 0 and said.startswith("dry run: nothing was started")
    assert "warning: the first step lowers canary from 5% to 1%" in said
    assert (await api(stack, "GET", "/rollouts"))["rollouts"] == []
    process = await cli(
        stack, *START, "--steps", "10,100", "--interval", "0.3", "--min-requests", "50"
    )
    await run(process)
    assert process.returncode == 0
    await until(stack, "shop-1", lambda v: bool(v["waiting_for"]), 20, "the hint")
    process = await cli(stack, "status", "shop-1")
    stdout, _ = await run(process)
    said = " ".join(stdout.split())
    assert "waiting for: traffic: the window has 0 of the 50 responses it needs" in said
    assert "send requests to gateway shop" in said
    await api(stack, "POST", "/rollouts/shop-1/abort")


async def test_rollout_commands_take_a_dry_run(stack: Stack) -> None:
    """Issue 10.8: every write takes --dry-run; pause, promote and abort say what they would
    do and do nothing; on an ended rollout the dry run is refused as the command would be."""
    rollout_id = await start(stack, spec(checks={"min_requests": 1_000_000}))
    for action, says in (
        ("pause", "pause would do: it holds step"),
        ("promote", "promote would do: step 4's weights now (stable 0%, canary 100%)"),
        ("abort", "abort would do: back to the weights before the rollout (stable 100%"),
    ):
        process = await cli(stack, action, rollout_id, "--dry-run")
        stdout, stderr = await run(process)
        said = " ".join(stdout.split())
        assert process.returncode == 0, stdout + stderr
        assert said.startswith(f"dry run, nothing sent: rollout {rollout_id} is progressing")
        assert says in said, said
    view = await api(stack, "GET", f"/rollouts/{rollout_id}")
    assert view["phase"] == "progressing"
    assert not events(view, "paused") and not events(view, "promote_requested")
    await api(stack, "POST", f"/rollouts/{rollout_id}/abort")
    await finished(stack, rollout_id)
    process = await cli(stack, "promote", rollout_id, "--dry-run")
    stdout, _ = await run(process)
    assert process.returncode == 2 and "error 409" in stdout, stdout


async def test_a_deleted_gateway_ends_its_rollout_and_leaves_no_trace(stack: Stack) -> None:
    """Issue 10.4: rollouts of deleted gateways stayed listed; /metrics kept their phase."""
    rollout_id = await start(stack, spec(checks={"min_requests": 1_000_000}))
    await api(stack, "POST", f"/rollouts/{rollout_id}/pause")
    await api(stack, "DELETE", "/gateways/shop")
    deadline = asyncio.get_running_loop().time() + 10
    while (await api(stack, "GET", "/rollouts"))["rollouts"]:
        assert asyncio.get_running_loop().time() < deadline, "still listed"
        await asyncio.sleep(0.1)  # poll interval
    gone = await asyncio.to_thread(stack.request, "GET", f"/api/v1/rollouts/{rollout_id}")
    assert gone.status == 404
    metrics = await asyncio.to_thread(_metrics, stack)
    assert 'gateway="shop"' not in metrics
    # the file is rewritten after the rollout leaves the list: poll it too
    def stored() -> dict[str, object]:
        return dict(json.loads((stack.state_dir / "rollouts.json").read_text()))

    deadline = asyncio.get_running_loop().time() + 10
    while stored()["rollouts"]:
        assert asyncio.get_running_loop().time() < deadline, "still in rollouts.json"
        await asyncio.sleep(0.1)  # poll interval
    assert stored()["sequences"] == {"shop": 1}


def _metrics(stack: Stack) -> str:
    with urllib.request.urlopen(f"{stack.api}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


async def test_outbound_calls_stay_inside_the_allow_list(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Issue 9.5: webhooks and Prometheus checks could reach any URL (SSRF)."""
    allowed = free_port()
    extra = ["--allow-outbound", f"127.0.0.1:{allowed}", "--allow-outbound", "10.0.0.0/8:9090"]
    with running_stack(short_tmp, shop_config(backends, "100%", "0%"), extra=extra) as stack:
        cases = [
            ({"pre_step": [{"url": "http://169.254.169.254/latest"}]}, "webhooks.pre_step.0.url"),
            (
                {"rollback": [{"url": f"http://127.0.0.1:{allowed + 1}/"}]},
                "webhooks.rollback.0.url",
            ),
            ({"pre_step": [{"url": "http://localhost:9090/"}]}, "webhooks.pre_step.0.url"),
        ]
        for webhooks, field in cases:
            response = await asyncio.to_thread(
                stack.request, "POST", "/api/v1/rollouts", spec(webhooks=webhooks)
            )
            assert response.status == 400, response.body
            assert response.body["problems"][0]["field"] == field
            assert "not allowed by --allow-outbound" in response.body["problems"][0]["message"]
        ok = {"pre_step": [{"url": f"http://127.0.0.1:{allowed}/gate?token=s3cret"}]}
        response = await asyncio.to_thread(
            stack.request, "POST", "/api/v1/rollouts?dry_run=true", spec(webhooks=ok)
        )
        assert response.status == 200, response.body
        shown = response.body["spec"]["webhooks"]["pre_step"][0]["url"]
        assert shown == f"http://127.0.0.1:{allowed}/gate?token=***"
        assert "s3cret" not in json.dumps(response.body)


async def test_rollout_ids_are_anchored(stack: Stack) -> None:
    for bad in ("shop-1%0A", "shop-1%0D%0A", "Shop-1", "-1"):
        response = await asyncio.to_thread(stack.request, "GET", f"/api/v1/rollouts/{bad}")
        assert response.status == 400, (bad, response.status)
        assert response.body["problems"] == [{"field": "rollout", "message": "not an id"}]
