"""Grafana dashboards and provisioning: valid JSON Grafana can load, unique panel ids, a data
source variable and no data source pinned by uid, every template variable defined, and every
controller metric they query one the controller exports. (tests/integration/test_prometheus.py
evaluates every expression against a real Prometheus.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from controller.fleet.follow import FleetMetrics
from controller.metrics import Metrics
from controller.rollouts.metrics import RolloutMetrics
from controller.tls.metrics import register_certificate_metrics
from controller.tls.pem import parse_bundle
from controller.tls.store import CertificateStore
from tests.support.certs import Authority

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana/dashboards").glob("*.json"))
# $name, ${name}, ${name:format}, ${name.field}, [[name]]
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?:[.:][^}]*)?\}|\[\[(\w+)(?::\w+)?\]\]")
GRAFANA_BUILTINS = {
    "__interval",
    "__interval_ms",
    "__rate_interval",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__value",
    "__url_time_range",
    "__field",
    "__series",
    "__data",
    "__name",
    "__dashboard",
    "__org",
    "__user",
    "timeFilter",
}
METRIC = re.compile(r"\b(weighbridge_[a-z0-9_]+)")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in the JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets, annotations, variable queries."""
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    found += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    found += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_there_are_an_overview_and_a_canary_view() -> None:
    uids = {load(path)["uid"] for path in DASHBOARDS}
    assert uids == {"weighbridge-overview", "weighbridge-canary"}


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    for key in ("uid", "title", "panels", "templating", "annotations", "schemaVersion", "time"):
        assert key in dashboard, key
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned dashboards carry no id"
    for panel in panels(dashboard):
        assert panel["title"] and panel["type"] in {"timeseries", "stat", "table", "row"}
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']}: say what it shows"
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_a_datasource_variable_and_no_pinned_datasource(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    references = [value for key, value in walk(dashboard) if key == "datasource"]
    assert references
    for reference in references:
        # a string is a data source name; an object must point at the variable
        assert isinstance(reference, dict), f"data source named directly: {reference!r}"
        assert reference.get("uid") in ("${datasource}", "$datasource"), reference
    text = json.dumps(dashboard)
    assert '"datasourceUid"' not in text


def test_every_variable_used_is_defined(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for _, value in walk(dashboard):
        if not isinstance(value, str):
            continue
        for match in VARIABLE.finditer(value):
            name = next(group for group in match.groups() if group)
            if name.isdigit():
                continue  # `$1` in label_replace is a regex group, which Grafana leaves alone
            assert name in defined or name in GRAFANA_BUILTINS, f"${name} in {value!r}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert variable["query"].startswith("label_values(")
            assert variable["definition"] == variable["query"]


def test_variables_are_defined_before_use(dashboard: dict[str, Any]) -> None:
    """Grafana resolves variables in order: a query may only use the ones above it."""
    seen: set[str] = set()
    for variable in dashboard["templating"]["list"]:
        for match in VARIABLE.finditer(json.dumps(variable.get("query", ""))):
            name = next(group for group in match.groups() if group)
            assert name in seen, f"{variable['name']} uses ${name} before it is defined"
        seen.add(variable["name"])


def test_canary_view_has_gateway_and_route_variables_and_weight_annotations() -> None:
    canary = load(ROOT / "grafana/dashboards/canary.json")
    variables = {v["name"]: v for v in canary["templating"]["list"]}
    assert not variables["gateway"]["multi"]
    assert variables["route"]["multi"] and variables["route"]["includeAll"]
    assert "$gateway" in variables["route"]["query"]
    annotations = [a["expr"] for a in canary["annotations"]["list"]]
    assert any("weighbridge_route_weight_desired_ratio" in expr for expr in annotations)
    titles = {p["title"] for p in panels(canary)}
    assert "Measured share vs desired weight" in titles


def test_controller_metrics_queried_are_exported(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exported = set()
    metrics = Metrics(CollectorRegistry())
    RolloutMetrics(metrics.registry)  # what `weighbridge run` adds to the same registry
    FleetMetrics(metrics.registry, "n1")  # and, on a fleet node, `--store etcd://…`
    store = CertificateStore(tmp_path / "certs")  # certificates: a series per stored one
    store.put("shop", parse_bundle(Authority().issue("shop.example").pem))
    register_certificate_metrics(metrics.registry, store)
    for family in text_string_to_metric_families(metrics.render().decode()):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        exported |= {family.name + suffix for suffix in suffixes}
    used = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no controller metric"
    assert used <= exported, f"not exported by the controller: {used - exported}"


def test_provisioning_files() -> None:
    sources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    providers = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/weighbridge.yml").read_text()
    )
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


SELECTOR = re.compile(r"\b((?:weighbridge|haproxy)_[a-z0-9_]+)\b(?![(:])(\{[^}]*\})?")


def test_every_panel_filters_by_node(dashboard: dict[str, Any]) -> None:
    """Every series a panel reads is filtered by the `node` variable (a node's two targets
    share `instance`), and HAProxy's backends join the controller's routes per node: the same
    backend names exist on every node of a fleet. The Fleet row reads the node table itself
    (every node exports every node's applied revision, labelled `node`)."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["node"]["query"] == "label_values(weighbridge_ready, instance)"
    assert variables["node"]["multi"] and variables["node"]["includeAll"]
    fleet = {id(p) for p in fleet_row(dashboard)}
    found = [
        (p["title"], t["expr"])
        for p in panels(dashboard)
        if id(p) not in fleet
        for t in p.get("targets", [])
    ]
    found += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    found += [
        (v["name"], v["query"])
        for v in variables.values()
        if v["type"] == "query" and v is not variables["node"]
    ]
    for title, expr in found:
        for metric, labels in SELECTOR.findall(expr):
            assert 'instance=~"$node"' in labels, f"{title}: {metric} is not filtered by node"
        assert "on (proxy)" not in expr, f"{title}: join on (instance, proxy)"


def fleet_row(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels of the overview's Fleet row (after its row panel, up to the next row)."""
    found, inside = [], False
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            inside = panel["title"] == "Fleet"
            found += panel.get("panels", []) if inside else []
        elif inside:
            found.append(panel)
    return found


def test_the_overview_has_a_fleet_row() -> None:
    overview = load(ROOT / "grafana/dashboards/overview.json")
    titles = {p["title"] for p in fleet_row(overview)}
    assert titles == {
        "Nodes up",
        "Applied revision per node vs store revision",
        "Lag per node (revisions)",
        "Store reconnects and re-lists",
    }
    exprs = " ".join(t["expr"] for p in fleet_row(overview) for t in p["targets"])
    for metric in (
        "weighbridge_node_applied_revision",
        "weighbridge_store_revision",
        "weighbridge_store_reconnects_total",
        "weighbridge_store_relists_total",
    ):
        assert metric in exprs
