"""Fuzz the whole HTTP API from the description it serves (schemathesis), on a real stack.

Every generated request (valid and invalid bodies, parameters, headers) must get an answer
that is not a 5xx and conforms to the description; after any 4xx the desired state, the
rollouts and HAProxy's own state (maps and servers, read from its socket) are unchanged;
and after every request HAProxy runs exactly the desired state.

Bounded for CI: at most `WEIGHBRIDGE_FUZZ_EXAMPLES` (default 800) requests and
`WEIGHBRIDGE_FUZZ_SECONDS` (default 60) of requests, the same examples on every run; with
`WEIGHBRIDGE_FUZZ_SEED` set, other examples. The longer run in docs/security.md ("API
fuzzing") is this test with larger bounds and a seed.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from controller import model
from controller.api.openapi import input_format
from tests.integration.conftest import shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.haproxy

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SECONDS = float(os.environ.get("WEIGHBRIDGE_FUZZ_SECONDS", "60"))
EXAMPLES = int(os.environ.get("WEIGHBRIDGE_FUZZ_EXAMPLES", "800"))
SEED = os.environ.get("WEIGHBRIDGE_FUZZ_SEED")
MIN_CALLS = 50
"""Fewer requests than this within the time budget: the run proves too little, it fails."""
CLOSED_PORT = r"^http://127\.0\.0\.1:9/[a-z]{0,8}$"
"""Webhooks and Prometheus checks may only aim at the discard port on loopback."""


@pytest.fixture
def stack(backends: BackendProcess, short_tmp: Path) -> Iterator[Stack]:
    with running_stack(short_tmp, shop_config(backends), token=TOKEN) as running:
        yield running


def loopback_only(node: Any, binds: list[str]) -> Any:
    """The served description with every address narrowed to loopback (test rules): binds
    to ports reserved for this test, instances to 127.0.0.0/8, outbound URLs to a closed port."""
    if isinstance(node, list):
        return [loopback_only(item, binds) for item in node]
    if not isinstance(node, dict):
        return node
    if node == input_format(model.Bind):
        return {"enum": binds}
    if node == input_format(model.Instance):
        return {"type": "string", "pattern": r"^127\.0\.0\.[1-9]:9[0-9]{3}$"}
    if "pattern" in node and str(node["pattern"]).startswith("^https?://"):
        return {**node, "pattern": CLOSED_PORT}
    return {key: loopback_only(value, binds) for key, value in node.items()}


def desired(stack: Stack) -> tuple[Any, Any, int]:
    gateways = stack.request("GET", "/api/v1/gateways").body
    rollouts = stack.request("GET", "/api/v1/rollouts").body
    revision = stack.request("GET", "/api/v1/controller").body["revision"]
    return gateways, [(r["id"], r["phase"]) for r in rollouts["rollouts"]], revision


def in_sync(stack: Stack) -> bool:
    """HAProxy runs the desired state: weights, strengths, instances read back per gateway."""
    for name in stack.request("GET", "/api/v1/gateways").body["gateways"]:
        status = stack.request("GET", f"/api/v1/gateways/{name}/status").body
        if not status["in_sync"]:
            return False
        for route in status["routes"].values():
            if (
                route["condition"]
                and route["applied_condition_strength"] != route["condition_strength"]
            ):
                return False
    return True


def settle_rollouts(stack: Stack) -> None:
    """Abort what a generated POST started, so the next case starts from a still state."""
    for rollout in stack.request("GET", "/api/v1/rollouts?active=true").body["rollouts"]:
        stack.request("POST", f"/api/v1/rollouts/{rollout['id']}/abort")

    def settled() -> bool:
        active = stack.request("GET", "/api/v1/rollouts?active=true").body["rollouts"]
        return not active

    wait_until(settled, 30, "generated rollouts to end")


def test_fuzz_the_whole_api(stack: Stack) -> None:
    binds = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    raw = stack.request("GET", "/api/v1/openapi.json").body
    schema = schemathesis.openapi.from_dict(loopback_only(raw, binds))
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    cases = st.one_of(
        [
            operation.as_strategy(generation_mode=mode)
            for operation in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]
    )
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    deadline = started + SECONDS

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def one(case: schemathesis.Case[Any]) -> None:
        if time.monotonic() > deadline:
            return
        before = (desired(stack), stack.haproxy_snapshot())
        response = case.call(base_url=stack.api, headers=AUTH, timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )
        if 400 <= response.status_code < 500:
            after = (desired(stack), stack.haproxy_snapshot())
            assert after == before, (
                f"{response.status_code} changed the state: {case.as_curl_command()}"
            )
        settle_rollouts(stack)
        wait_until(lambda: in_sync(stack), 10, "HAProxy to run the desired state")

    if SEED is not None:
        one = seed(int(SEED))(one)
    one()
    calls = sum(statuses.values())
    print(
        f"\nfuzz: {calls} requests in {time.monotonic() - started:.0f} s, "
        f"statuses {sorted(statuses.items())}"
    )
    assert calls >= MIN_CALLS, statuses
    assert not any(status >= 500 for status in statuses)
    assert any(status < 300 for status in statuses), "no generated request was ever accepted"
