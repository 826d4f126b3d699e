"""The report of `bench.scale`: measured rows, one table per size, and the ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.common import fmt, markdown_table, percentile


@dataclass
class Row:
    """One measured line: samples (ms) or a single value (its unit in the name)."""

    name: str
    samples: list[float]
    wanted: int = 1
    note: str = ""
    cpu_ms: float = math.nan
    """Controller CPU time per operation while the row ran."""

    @property
    def single(self) -> bool:
        return self.wanted == 1


@dataclass
class Size:
    gateways: int
    rows: list[Row] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    wall_s: float = 0.0
    failure: str = ""
    """Why the size stopped before its last row, if it did."""


def cells(row: Row) -> list[str]:
    if row.single:
        return [fmt(row.samples[0]) if row.samples else "–", "", ""]
    p50, p99 = percentile(row.samples, 50), percentile(row.samples, 99)
    return [fmt(p50), fmt(p99), fmt(max(row.samples, default=math.nan))]


def size_table(size: Size) -> str:
    rows = [
        [row.name, "" if row.single else len(row.samples), *cells(row),
         "" if math.isnan(row.cpu_ms) else fmt(row.cpu_ms), row.note]
        for row in size.rows
    ]
    header = ["measure", "n", "p50 ms (or value)", "p99 ms", "max ms", "controller CPU/op ms",
              "note"]
    return "\n".join([
        f"### {size.gateways:,} gateways ({size.wall_s:.0f} s)",
        "",
        f"- load before: {size.load_before}",
        f"- load after: {size.load_after}",
        *([f"- **stopped early: {size.failure}**"] if size.failure else []),
        "",
        markdown_table(header, rows),
        "",
    ])


def figure(row: Row, pct: float) -> float:
    """The row's value (`pct` 0) or a percentile of its samples."""
    if not row.samples:
        return math.nan
    return percentile(row.samples, pct) if pct else row.samples[0]


def comparison(sizes: list[Size]) -> str:
    """One line per figure: its value at each size and largest / smallest."""
    lines: list[list[object]] = []
    for first in sizes[0].rows:
        found = [next((r for r in s.rows if r.name == first.name), None) for s in sizes]
        stats = [("", 0.0)] if first.single else [(" p50", 50.0), (" p99", 99.0)]
        for label, pct in stats:
            values = [figure(r, pct) if r else math.nan for r in found]
            cut = "*" if found[-1] is not None and "**" in found[-1].note else ""
            lines.append([first.name + label, *(fmt(v) for v in values),
                          f"{values[-1] / values[0]:.1f}{cut}" if values[0] else "–"])
    header = ["figure", *(f"{s.gateways:,} gw" for s in sizes),
              f"ratio {sizes[-1].gateways:,} / {sizes[0].gateways:,}"]
    budget = any(str(line[-1]).endswith("*") for line in lines)
    note = "\n\n\\* the largest size hit its time budget (or failed) there" if budget else ""
    return markdown_table(header, lines) + note
