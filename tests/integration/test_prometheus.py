"""A real Prometheus scrapes a real controller and HAProxy; every dashboard query must answer.

The scenario gives every panel something to show: a reload (a gateway added), a drift repair
(a server put in maintenance by hand), a weight change (50/50 → 90/10), then traffic at 90/10.
Prometheus scrapes both endpoints every second with deploy/prometheus.yml's jobs and loads
deploy/prometheus-rules.yml. Then every expression of every dashboard (panels, annotations,
variables) goes through Prometheus's HTTP API with the template variables filled in, and must
return data; the measured share must be the split the client counted, which is 90/10 within
the binomial tolerance.

The rate window stands in for `$__rate_interval` and covers the whole scenario: Prometheus saw
every counter at zero before any traffic, so rate() ratios are exact ratios of request counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until
from tests.support.stats import assert_share
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana/dashboards"
REQUESTS = 4000
SCRAPE_SECONDS = 1


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        try:
            data = self.get("/api/v1/query", **params)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus refused {expr!r}: {exc.read().decode()}") from exc
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None while it has no data."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_for(self, expr: str, what: str, timeout: float = 30) -> None:
        wait_until(lambda: bool(self.query(expr)), timeout, what, interval=0.2)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Prometheus exited:\n{self.log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


def prometheus_binary() -> str:
    """Debian's package, installed by scripts/prometheus.sh when missing."""
    binary = shutil.which("prometheus")
    if binary is None:
        script = subprocess.run(
            ["bash", str(ROOT / "scripts/prometheus.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip(
                "Prometheus is not installed and scripts/prometheus.sh could not install it: "
                + (script.stderr or script.stdout).strip()[-500:]
            )
    return binary


def scrape_config(stack: Stack, rules: Path) -> dict[str, Any]:
    """deploy/prometheus.yml, pointed at this stack and sped up."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    config["global"] = {
        "scrape_interval": f"{SCRAPE_SECONDS}s",
        "evaluation_interval": f"{SCRAPE_SECONDS}s",
    }
    config["rule_files"] = [str(rules)]
    targets = {"weighbridge": stack.api_port, "haproxy": stack.stats_port}
    for job in config["scrape_configs"]:
        [group] = job["static_configs"]  # its labels stay: `instance` names the node
        group["targets"] = [f"127.0.0.1:{targets[job['job_name']]}"]
    return config


@contextmanager
def running_prometheus(tmp: Path, config: dict[str, Any]) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    config_file = tmp / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until(prometheus.ready, 60, "Prometheus to be ready", interval=0.1)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def fill(expr: str, window: str, variables: dict[str, str]) -> str:
    """What Grafana would send: built-in intervals and template variables substituted."""
    for name in ("__rate_interval", "__interval", "__range"):
        expr = expr.replace(f"${{{name}}}", window).replace(f"${name}", window)
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr.replace("$1", ""), f"unfilled variable in {expr}"
    return expr


ROLLOUT_ROW = "Rollout"
"""Its panels and the `Rollout steps` annotation need a rollout: tests/integration/
test_rollouts.py evaluates them during one; this scenario runs none."""
FLEET_ROW = "Fleet"
"""Its panels need a fleet (etcd): tests/integration/test_prometheus_fleet.py evaluates them."""
NODE = "weighbridge"
"""The `instance` label deploy/prometheus.yml gives the single node's two targets."""
TLS_ROW = "TLS certificates"
"""Its panel needs a stored certificate; gateways take none until the TLS wiring lands
(tests/integration/test_tls_metrics.py evaluates the expression with promtool)."""


def panel_queries(
    board: dict[str, Any], *, rows: Iterable[str] | None = None, skip_rows: Iterable[str] = ()
) -> Iterator[tuple[str, str]]:
    """Every panel's targets (those in collapsed rows too) and annotation, by row title."""
    row, wanted, skipped = "", set(rows or ()), set(skip_rows)
    for top in board["panels"]:
        row = top["title"] if top["type"] == "row" else row
        for panel in [top, *top.get("panels", [])]:
            if (rows is not None and row not in wanted) or row in skipped:
                continue
            for target in panel.get("targets", []):
                yield f"{panel['title']} [{target['refId']}]", target["expr"]
    for annotation in board["annotations"]["list"]:
        in_row = ROLLOUT_ROW if annotation["name"].startswith("Rollout") else ""
        if (rows is None or in_row in wanted) and in_row not in skipped:
            yield f"annotation {annotation['name']}", annotation["expr"]


def panel_expr(board: dict[str, Any], title: str, ref: str = "A") -> str:
    panel = next(p for p in board["panels"] if p["title"] == title)
    expr: str = next(t["expr"] for t in panel["targets"] if t["refId"] == ref)
    return expr


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {series["metric"][label]: float(series["value"][1]) for series in result}


def test_every_dashboard_query_answers_and_shows_the_split(
    backends: BackendProcess, short_tmp: Path
) -> None:
    started = time.time()
    config = shop_config(backends, stable="50%", canary="50%")
    with (
        running_stack(short_tmp, config, extra=["--sync-interval", "0.5"]) as stack,
        running_prometheus(
            short_tmp, scrape_config(stack, ROOT / "deploy/prometheus-rules.yml")
        ) as prometheus,
    ):
        prometheus.wait_for('up{job="weighbridge"} == 1', "Prometheus to scrape the controller")
        prometheus.wait_for('up{job="haproxy"} == 1', "Prometheus to scrape HAProxy")
        prometheus.wait_for(
            'weighbridge_route_backend_info{gateway="shop"}', "the route → backend binding"
        )

        # a reload: a new gateway
        blog = {
            "bind": f"127.0.0.1:{free_port()}",
            "routes": {"main": {"weight": "100%", "instances": addresses(backends, "spare")}},
        }
        response = stack.request("PUT", "/api/v1/gateways/blog", blog)
        assert response.status == 201, response.body
        assert response.body["method"] == "reload"
        prometheus.wait_for(
            'weighbridge_reloads_total{reason="gateway-added", result="ok"} > 0', "the reload"
        )

        # a drift repair: a server put in maintenance behind the controller's back
        status = stack.request("GET", "/api/v1/gateways/shop/status").body
        stable = status["routes"]["stable"]
        stack.admin(f"set server {stable['backend']}/{stable['instances'][0]['slot']} state maint")
        prometheus.wait_for(
            'weighbridge_drift_repairs_total{gateway="shop", kind="server-state"} > 0',
            "the drift repair",
        )

        # a weight change, applied live
        response = stack.request(
            "PATCH", "/api/v1/gateways/shop/weights", {"stable": "90%", "canary": "10%"}
        )
        assert response.status == 200 and response.body["method"] == "runtime", response.body
        prometheus.wait_for(
            'weighbridge_route_weight_applied_ratio{gateway="shop", route="canary"} == 0.1',
            "the applied weight read back from HAProxy",
        )
        shop_requests = (
            "sum(haproxy_backend_http_requests_total * on (proxy) group_left (gateway, route)"
            ' weighbridge_route_backend_info{gateway="shop"})'
        )
        assert prometheus.value(shop_requests) == 0, "traffic reached shop before the test's"

        result = asyncio.run(send(gateway_url(stack), REQUESTS, concurrency=16))
        assert result.errors == [] and result.statuses == {200: REQUESTS}
        counted = dict(result.routes)
        assert sum(counted.values()) == REQUESTS
        assert_share(counted["canary"], REQUESTS, 0.1, max_tolerance=0.03, label="canary")
        assert_share(counted["stable"], REQUESTS, 0.9, max_tolerance=0.03, label="stable")
        wait_until(
            lambda: prometheus.value(shop_requests) == REQUESTS,
            30,
            "Prometheus to scrape the final request counts",
            interval=0.2,
        )
        expected = {route: count / REQUESTS for route, count in counted.items()}

        # the recorded share of deploy/prometheus-rules.yml, over its own 1-minute window: read
        # at an evaluation that saw the final counts (an earlier one may have seen a scrape
        # taken in the middle of the burst: 0.825/0.175 once on a loaded machine)
        scraped = time.time()
        rule = 'weighbridge:route_traffic_share:ratio_rate1m{gateway="shop"}'
        prometheus.wait_for(f"timestamp({rule}) > {scraped:.3f}", "an evaluation of the rule")
        evaluated = min(float(row["value"][1]) for row in prometheus.query(f"timestamp({rule})"))
        recorded = by_label(prometheus.query(rule, evaluated), "route")
        assert recorded == pytest.approx(expected, abs=0.005)

        at = time.time()
        window = f"{math.ceil(at - started) + 5 * SCRAPE_SECONDS}s"
        boards = dashboards()
        assert set(boards) == {"overview", "canary"}
        views = {
            "overview": [
                {"node": NODE, "gateway": "(blog|shop)"},
                {"node": NODE, "gateway": "shop"},
            ],
            "canary": [
                {"node": NODE, "gateway": "shop", "route": "canary"},
                {"node": NODE, "gateway": "shop", "route": "(canary|stable)"},
            ],
        }
        empty = []
        for name, board in boards.items():
            for variables in views[name]:
                skip = [ROLLOUT_ROW, TLS_ROW, FLEET_ROW]
                for label, expr in panel_queries(board, skip_rows=skip):
                    if not prometheus.query(fill(expr, window, variables), at):
                        empty.append(f"{name} {variables}: {label}: {expr}")
        assert not empty, "queries without data:\n" + "\n".join(empty)

        # the measured share is the split the client counted, to the request
        canary = boards["canary"]
        share = panel_expr(canary, "Measured share vs desired weight")
        measured = by_label(prometheus.query(fill(share, window, views["canary"][1]), at), "route")
        assert measured == pytest.approx(expected, abs=1e-9)
        only_canary = by_label(
            prometheus.query(fill(share, window, views["canary"][0]), at), "route"
        )
        assert only_canary == pytest.approx({"canary": expected["canary"]}, abs=1e-9)
        table = panel_expr(boards["overview"], "Measured share vs desired weight")
        rows = prometheus.query(fill(table, window, views["overview"][0]), at)
        assert {
            (row["metric"]["gateway"], row["metric"]["route"]): float(row["value"][1])
            for row in rows
            if row["metric"]["gateway"] == "shop"
        } == pytest.approx({("shop", r): s for r, s in expected.items()}, abs=1e-9)
        desired = panel_expr(canary, "Measured share vs desired weight", "B")
        assert by_label(prometheus.query(fill(desired, window, views["canary"][1])), "route") == {
            "stable": 0.9,
            "canary": 0.1,
        }

        # template variables resolve
        for variables in views["canary"][:1]:
            for variable in canary["templating"]["list"]:
                if variable["type"] != "query":
                    continue
                inner = fill(variable["query"], window, variables).removeprefix("label_values(")
                selector, label = (part.strip() for part in inner.removesuffix(")").rsplit(",", 1))
                values = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
                wanted = {
                    "instance": {NODE},
                    "gateway": {"shop", "blog"},
                    "route": {"stable", "canary"},
                }[label]
                assert set(values) == wanted, variable["name"]

        # the counters moved as they should
        for expr in (
            'weighbridge_change_apply_seconds_count{method="runtime"} > 0',
            'weighbridge_change_apply_seconds_count{method="reload"} > 0',
            'weighbridge_runtime_commands_total{result="ok"} > 0',
            'weighbridge_api_requests_total{method="PATCH",'
            ' route="/api/v1/gateways/{gateway}/weights", status="200"} == 1',
            "weighbridge_reload_duration_seconds_count > 0",
            "weighbridge_ready == 1",
            "weighbridge_haproxy_up == 1",
            "time() - weighbridge_last_sync_timestamp_seconds < 30",
        ):
            assert prometheus.query(expr), f"no data for {expr}"

        # a deleted gateway leaves no series behind on the controller's /metrics
        assert stack.request("DELETE", "/api/v1/gateways/blog").status == 200
        with urllib.request.urlopen(f"{stack.api}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'gateway="shop"' in text
        assert 'gateway="blog"' not in text


def test_rules_are_valid() -> None:
    prometheus_binary()
    check = subprocess.run(
        ["promtool", "check", "rules", str(ROOT / "deploy/prometheus-rules.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
