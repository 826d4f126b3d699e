"""How rollouts read as text: one place for events, logs, the CLI's tables and lines.

JSON keeps identifiers (`rolled_back`, `step_started`, `success_rate`); text shows words
(`rolled back`, `step started`, `success rate`). Rates are percentages with two decimals
everywhere ("success rate 0.00% < 99.00%"), response times whole milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

_LABELS = {
    "success_rate": "success rate",
    "response_time": "response time",
    "instances_down": "instances down",
}


def words(identifier: str) -> str:
    """`rolled_back` → `rolled back`: phases and event kinds in text."""
    return identifier.replace("_", " ")


def check_name(name: str) -> str:
    """Built-in check names in words; Prometheus checks keep the name they were given."""
    return _LABELS.get(name, name)


def value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    if unit == "ratio":
        return f"{value * 100:.2f}%"
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"


def threshold_text(check: Mapping[str, Any]) -> str:
    """`≥ 99.00%`: the bound a check is held to."""
    if check.get("threshold") is None:
        return "-"
    sign = "≥" if check.get("bound") == "min" else "≤"
    return f"{sign} {value_text(check['threshold'], check.get('unit', ''))}"


def check_text(check: Mapping[str, Any]) -> str:
    """One check as events and logs show it: `success rate 0.00% < 99.00%`."""
    name, unit = check_name(check["name"]), check.get("unit", "")
    if check.get("value") is None:
        builtin = check["name"] in _LABELS or check["name"] == "requests"
        note = check.get("note", "")
        note = f" ({note})" if note and not builtin and note != "Prometheus" else ""
        return f"{name} no data{note}"
    shown = value_text(check["value"], unit)
    if check.get("threshold") is None:
        return f"{name} {shown}"
    low = check.get("bound") == "min"
    holds = check["value"] >= check["threshold"] if low else check["value"] <= check["threshold"]
    sign = ("≥" if holds else "<") if low else ("≤" if holds else ">")
    return f"{name} {shown} {sign} {value_text(check['threshold'], unit)}"


def evaluation_text(evaluation: Mapping[str, Any]) -> str:
    """`fail: success rate 0.00% < 99.00%; requests 255 ≥ 100`."""
    parts = [check_text(result) for result in evaluation["results"]]
    return f"{evaluation['verdict']}: " + "; ".join(parts)


def weights_text(weights: Mapping[str, str]) -> str:
    return ", ".join(f"{route} {weight}" for route, weight in weights.items())


def clock(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S") if at else "-"


def event_line(event: Mapping[str, Any]) -> str:
    """`12:00:01 step 1 check: fail: …` (`×3, last 12:00:07` when repeated)."""
    repeated = ""
    if event.get("count", 1) > 1:
        repeated = f" (×{event['count']}, last {clock(event.get('last_at'))})"
    return (
        f"{clock(event['at'])} step {event['step']} {words(event['kind'])}: "
        f"{event['message']}{repeated}"
    )
