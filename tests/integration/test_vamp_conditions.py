"""Every condition form of Vamp's parser tests and docs, pasted unchanged, on real traffic.

One controller and HAProxy for the module; one gateway per form (tests/support/vamp_forms.py):
route `canary` has the condition at weight 0 % (strength 100 %), `stable` takes 100 %. A
request the form matches reaches canary every time; any other request never does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import addresses
from tests.support import BackendProcess
from tests.support.ports import free_ports
from tests.support.stack import Stack, running_stack
from tests.support.vamp_forms import VAMP_FORMS
from tests.support.wire import Req, fetch

pytestmark = pytest.mark.haproxy

SENDS = 3
"""Requests per case: at strength 100 % and weight 0 % every one must land the same."""


@dataclass(frozen=True)
class FormGateways:
    stack: Stack
    ports: list[int]
    """One gateway per entry of VAMP_FORMS, in order."""


@pytest.fixture(scope="module")
def form_gateways(backends: BackendProcess, module_tmp: Path) -> Iterator[FormGateways]:
    ports = free_ports(len(VAMP_FORMS))
    stable, canary = addresses(backends, "stable")[:1], addresses(backends, "canary")[:1]
    gateways = {
        f"v{i}": {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                "stable": {"weight": "100%", "instances": stable},
                "canary": {"weight": "0%", "instances": canary, "condition": form.text},
            },
        }
        for i, (form, port) in enumerate(zip(VAMP_FORMS, ports, strict=True))
    }
    with running_stack(module_tmp, {"gateways": gateways}) as stack:
        yield FormGateways(stack, ports)


CASES = [
    (i, form.text, request, matches)
    for i, form in enumerate(VAMP_FORMS)
    for request, matches in form.cases
]


def test_the_table_has_a_form_per_vamp_spelling() -> None:
    assert len(VAMP_FORMS) >= 40
    assert len(CASES) >= 2 * len(VAMP_FORMS)


@pytest.mark.parametrize(
    ("index", "condition", "request_", "matches"),
    CASES,
    ids=[
        f"{i}:{c[:40]!r}|{r.describe()[:30]}|{'canary' if m else 'stable'}" for i, c, r, m in CASES
    ],
)
def test_vamp_condition_routes_as_it_reads(
    form_gateways: FormGateways, index: int, condition: str, request_: Req, matches: bool
) -> None:
    port = form_gateways.ports[index]
    routes = Counter(fetch(port, request_).route for _ in range(SENDS))
    assert routes == {("canary" if matches else "stable"): SENDS}
