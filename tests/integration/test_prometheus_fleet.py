"""The dashboards on a fleet: real etcd, two real nodes (controller + HAProxy each), a real
Prometheus scraping them with deploy/prometheus-fleet.yml's jobs and labels.

Every overview query (with `$node` at both nodes and at one) must answer without an error (two
nodes export the same HAProxy backend names: a join `on (proxy)` alone would be refused as
many-to-many), the Fleet row and the traffic panels must have data, and the node variable
must really filter: the measured share with `$node = n1` is exactly the split of the requests
sent through n1, and n2's through n2.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import shop_config
from tests.integration.test_prometheus import (
    ROLLOUT_ROW,
    ROOT,
    SCRAPE_SECONDS,
    TLS_ROW,
    by_label,
    dashboards,
    fill,
    panel_expr,
    panel_queries,
    running_prometheus,
)
from tests.support import BackendProcess
from tests.support.etcd import etcd_cluster
from tests.support.stack import Stack, running_nodes, wait_until
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

NODES = ("n1", "n2")
REQUESTS = {"n1": 600, "n2": 300}
"""Unequal on purpose: a filter that mixed the nodes would not give each node's own counts."""
FLEET_ROW = "Fleet"
WITH_DATA = {
    "Nodes up",
    "Applied revision per node vs store revision",
    "Lag per node (revisions)",
    "Store reconnects and re-lists",
    "Requests/s per gateway",
    "Measured share vs desired weight",
    "Controller ready",
    "HAProxy up",
    "Gateways",
}
"""Panels the scenario gives data on every node (the others need reloads, drift, 5xx…: the
single-node test shows them; here they must answer without an error)."""


def scrape_config(nodes: list[Stack], rules: Path) -> dict[str, Any]:
    """deploy/prometheus-fleet.yml, pointed at these nodes (labels kept) and sped up."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy/prometheus-fleet.yml").read_text())
    config["global"] = {
        "scrape_interval": f"{SCRAPE_SECONDS}s",
        "evaluation_interval": f"{SCRAPE_SECONDS}s",
    }
    config["rule_files"] = [str(rules)]
    for job in config["scrape_configs"]:
        groups = job["static_configs"]
        assert [g["labels"]["instance"] for g in groups] == list(NODES)
        for node, group in zip(nodes, groups, strict=True):
            port = node.api_port if job["job_name"] == "weighbridge" else node.stats_port
            group["targets"] = [f"127.0.0.1:{port}"]
    return config


def live_nodes(node: Stack) -> list[str]:
    body = node.request("GET", "/api/v1/nodes").body
    return [n["name"] for n in body["nodes"] if n["live"]] if isinstance(body, dict) else []


def test_dashboards_on_a_fleet_filter_by_node(backends: BackendProcess, short_tmp: Path) -> None:
    started = time.time()
    config = shop_config(backends, stable="50%", canary="50%")
    port = int(config["gateways"]["shop"]["bind"].rsplit(":", 1)[1])
    with (
        etcd_cluster(1, short_tmp) as etcd,
        running_nodes(short_tmp, etcd.url, len(NODES), config) as nodes,
        running_prometheus(
            short_tmp, scrape_config(nodes, ROOT / "deploy/prometheus-rules.yml")
        ) as prometheus,
    ):
        wait_until(lambda: len(live_nodes(nodes[1])) == len(NODES), 20, "both nodes live")
        # Prometheus sees every counter at zero before the traffic: rate() ratios are exact
        for what in ("haproxy_backend_http_requests_total", "weighbridge_route_backend_info"):
            prometheus.wait_for(
                f"count(count by (instance) ({what})) == {len(NODES)}",
                f"Prometheus to scrape {what} on every node",
            )
        response = nodes[1].request(
            "PATCH",
            "/api/v1/gateways/shop/weights?wait=applied&timeout=20",
            {"stable": "80%", "canary": "20%"},
        )
        assert response.status == 200, response.body
        assert response.body["applied"]["everywhere"], response.body
        revision = response.body["revision"]

        counted: dict[str, Counter[str]] = {}
        for i, (name, count) in enumerate(REQUESTS.items(), start=1):
            result = asyncio.run(send(f"http://127.0.0.{10 + i}:{port}/", count, concurrency=8))
            assert result.errors == [] and result.statuses == {200: count}, name
            counted[name] = result.routes

        shop_requests = (
            "sum by (instance) (haproxy_backend_http_requests_total * on (instance, proxy)"
            ' group_left (gateway, route) weighbridge_route_backend_info{gateway="shop"})'
        )
        wait_until(
            lambda: (
                by_label(prometheus.query(shop_requests), "instance")
                == {n: float(c) for n, c in REQUESTS.items()}
            ),
            30,
            "Prometheus to scrape every node's request counts",
            interval=0.2,
        )
        applied = "weighbridge_node_applied_revision"
        wait_until(
            lambda: (
                {
                    (s["metric"]["instance"], s["metric"]["node"]): float(s["value"][1])
                    for s in prometheus.query(applied)
                }
                == {(i, n): float(revision) for i in NODES for n in NODES}
            ),
            30,
            "every node to export every node's applied revision",
            interval=0.2,
        )

        at = time.time()
        window = f"{math.ceil(at - started) + 5 * SCRAPE_SECONDS}s"
        overview = dashboards()["overview"]
        empty = []
        for node in ("(n1|n2)", "n1"):
            variables = {"node": node, "gateway": "shop"}
            for label, expr in panel_queries(overview, skip_rows=[ROLLOUT_ROW, TLS_ROW]):
                answer = prometheus.query(fill(expr, window, variables), at)  # errors raise
                if not answer and label.split(" [")[0] in WITH_DATA:
                    empty.append(f"{variables}: {label}: {expr}")
        assert not empty, "queries without data:\n" + "\n".join(empty)
        fleet = list(panel_queries(overview, rows=[FLEET_ROW]))
        assert {label.split(" [")[0] for label, _ in fleet} <= WITH_DATA

        # the Fleet row: both nodes live and scraped, both at the write's revision, lag 0
        def values(title: str, ref: str, node: str = "(n1|n2)") -> list[dict[str, Any]]:
            expr = fill(panel_expr(overview, title, ref), window, {"node": node})
            return prometheus.query(expr, at)

        assert [float(s["value"][1]) for s in values("Nodes up", "A")] == [2.0]
        assert [float(s["value"][1]) for s in values("Nodes up", "B")] == [2.0]
        per_node = "Applied revision per node vs store revision"
        assert by_label(values(per_node, "A"), "node") == {n: revision for n in NODES}
        assert [float(s["value"][1]) for s in values(per_node, "B")] == [revision]
        assert by_label(values("Lag per node (revisions)", "A"), "node") == dict.fromkeys(
            NODES, 0.0
        )
        assert by_label(values("Lag per node (revisions)", "A", "n2"), "node") == {"n2": 0.0}
        relists = by_label(values("Store reconnects and re-lists", "B"), "instance")
        assert set(relists) == set(NODES)

        # the node variable filters: each node's measured share is its own requests' split
        share = panel_expr(overview, "Measured share vs desired weight")
        for name, routes in counted.items():
            rows = prometheus.query(fill(share, window, {"node": name, "gateway": "shop"}), at)
            measured = {row["metric"]["route"]: float(row["value"][1]) for row in rows}
            total = sum(routes.values())
            assert measured == pytest.approx(
                {route: n / total for route, n in routes.items()}, abs=1e-9
            ), name
