"""The certificate expiry alerts and dashboard panel, evaluated by Prometheus's own promtool
on series shaped as the controller exports them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.tls.metrics import EXPIRY, register_certificate_metrics
from controller.tls.pem import parse_bundle
from controller.tls.store import CertificateStore
from tests.support.certs import Authority

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


def panel_expr() -> str:
    board = json.loads((ROOT / "grafana/dashboards/overview.json").read_text())
    row = next(p for p in board["panels"] if p["title"] == "TLS certificates")
    [panel] = row["panels"]
    expr: str = panel["targets"][0]["expr"]
    return expr.replace("$node", ".*")  # the node variable at every node (the series has none)


def alert(certificate: str, severity: str, summary: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": severity, "certificate": certificate},
        "exp_annotations": {"summary": summary},
    }


def test_alerts_and_panel_on_exported_series(tmp_path: Path) -> None:
    # the series as the controller exports it: name, label, notAfter in seconds
    store = CertificateStore(tmp_path / "certs")
    store.put("shop", parse_bundle(Authority().issue("shop.example", days=10).pem))
    registry = CollectorRegistry()
    register_certificate_metrics(registry, store)
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    [sample] = family.samples
    assert (sample.name, sample.labels) == (EXPIRY, {"certificate": "shop"})

    # promtool's clock starts at 0: expiry timestamps are "days from now" there
    series = {"soon": 10 * DAY, "later": 30 * DAY, "urgent": 2 * DAY}
    tests = {
        "rule_files": [str(ROOT / "deploy/prometheus-rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'{EXPIRY}{{certificate="{name}"}}', "values": f"{value}x120"}
                    for name, value in series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "30m",  # `for: 1h` not yet reached
                        "alertname": "WeighbridgeCertificateExpiresSoon",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "61m",
                        "alertname": "WeighbridgeCertificateExpiresSoon",
                        "exp_alerts": [
                            alert("soon", "warning", "Certificate soon expires in 9d 22h 59m 0s"),
                            alert(
                                "urgent", "warning", "Certificate urgent expires in 1d 22h 59m 0s"
                            ),
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "WeighbridgeCertificateExpiringCritical",
                        "exp_alerts": [
                            alert(
                                "urgent",
                                "critical",
                                "Certificate urgent expires in 1d 23h 59m 0s (or has expired)",
                            )
                        ],
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": panel_expr(),
                        "eval_time": "0m",
                        "exp_samples": [
                            {"labels": f'{{certificate="{name}"}}', "value": value / DAY}
                            for name, value in series.items()
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests))
    check = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
