"""The results table on stdout and the JSON file behind it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "bottlenecks", "render_table", "write_json"]

_CPUS = os.cpu_count() or 1
# A single-threaded process near this many cores is the bottleneck.
_SATURATED = 0.85


@dataclass
class Row:
    """One line of the table: a measured figure for both systems, or a note on what was not measured."""

    scenario: str
    baseline: float | None = None
    ours: float | None = None
    digits: int = 1
    cpu: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        """The row's cells: scenario, baseline, ours, ratio, CPU."""
        if self.ours is None:
            return [self.scenario, "—", "—", "—", self.note]
        if self.baseline is None:  # nothing to compare with: the note says why
            return [
                self.scenario,
                "—",
                f"{self.ours:,.{self.digits}f}",
                "—",
                "; ".join(filter(None, [self.note, self.cpu])),
            ]
        ratio = f"{self.ours / self.baseline:.2f}x" if self.baseline else "—"
        return [
            self.scenario,
            f"{self.baseline:,.{self.digits}f}",
            f"{self.ours:,.{self.digits}f}",
            ratio,
            self.cpu,
        ]


def cpu_cell(runs: Mapping[str, Mapping[str, float]]) -> str:
    """CPU seconds per process for each system's run: ``baseline (12.3 s wall): worker 10.2, ...``."""
    cells = []
    for system, cpu in runs.items():
        processes = []
        for name, seconds in cpu.items():
            if name == "wall" or ":" in name:
                continue
            main = cpu.get(f"{name}:main")
            processes.append(
                f"{name} {seconds:.1f}" + (f" (main process {main:.1f})" if main is not None else "")
            )
        cells.append(f"{system} ({cpu['wall']:.1f} s wall): {', '.join(processes)}")
    return "; ".join(cells)


def bottlenecks(label: str, runs: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Lines naming, for each run, the busiest process and how busy the machine was."""
    lines = []
    for system, cpu in runs.items():
        wall = cpu["wall"] or 1.0
        busy = {name: seconds / wall for name, seconds in cpu.items() if name != "wall"}
        totals = {name: cores for name, cores in busy.items() if ":" not in name}
        name, cores = max(((n, c) for n, c in totals.items() if n != "other"), key=lambda item: item[1])
        machine = sum(totals.values()) / _CPUS
        line = f"{label}, {system}: busiest {name} at {cores:.2f} cores"
        if "worker:main" in busy:
            main = busy["worker:main"]
            pool = (busy["worker"] - main) / _CPUS
            line += f" (main process {main:.2f}, each pool process {pool:.2f} on average)"
        line += f"; machine {machine:.0%} busy"
        # A prefork worker (its main process sampled apart) spans several cores.
        multi = "worker:main" in busy
        saturated = [
            n for n, c in busy.items() if n != "other" and not (multi and n == "worker") and c >= _SATURATED
        ]
        if multi and busy["worker"] >= _SATURATED * _CPUS:
            saturated.append("worker (all pool processes)")
        if machine >= _SATURATED:
            saturated.append(f"the machine's {_CPUS} cores")
        if saturated:
            line += f" — saturated: {', '.join(saturated)}"
        if busy.get("other", 0.0) >= 0.2:
            line += f" — other users' processes took {busy['other']:.2f} cores"
        lines.append(line)
    return lines


def render_table(rows: list[Row]) -> str:
    """A Markdown table of ROWS (readable as plain text too)."""
    header = ["scenario", "baseline", "ours", "ratio (ours/baseline)", "CPU (s) per process"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        return "| " + " | ".join([*padded, cells[-1]]) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|---|"
    return "\n".join([line(header), rule, *(line(cells) for cells in table[1:])])


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write DOCUMENT to PATH (its folder created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
