"""CPU time from /proc: per process group, for this process, and for the whole machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuSample",
    "group_cpu_seconds",
    "machine_busy_seconds",
    "own_cpu_seconds",
    "process_cpu_seconds",
]

_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system seconds of every process in group PGID, and of their reaped children.

    A process's ``cutime``/``cstime`` hold the children it has waited for, and
    a reaped child no longer appears in /proc, so nothing is counted twice.
    """
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        # Fields after the command name, which may itself contain ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICK


def process_cpu_seconds(pid: int) -> float:
    """User + system seconds of process PID alone (0 if it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def own_cpu_seconds() -> float:
    """User + system seconds of this process (the benchmark's client and poller)."""
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """Seconds all CPUs of the machine spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    # guest time is already counted in user and nice.
    return (sum(values[:8]) - idle) / _TICK


@dataclass
class CpuSample:
    """CPU seconds of named process groups, this process and the machine, at one moment.

    ``parts`` are single processes inside a group (a worker's main process),
    sampled for the reader and not added to any total.
    """

    groups: dict[str, float]
    own: float
    machine: float
    parts: dict[str, float]

    @classmethod
    def take(cls, groups: dict[str, int], parts: dict[str, int] | None = None) -> CpuSample:
        """Sample every group in GROUPS (name -> process group id) and process in PARTS (name -> pid)."""
        return cls(
            groups={name: group_cpu_seconds(pgid) for name, pgid in groups.items()},
            own=own_cpu_seconds(),
            machine=machine_busy_seconds(),
            parts={name: process_cpu_seconds(pid) for name, pid in (parts or {}).items()},
        )

    def since(self, before: CpuSample) -> dict[str, float]:
        """Seconds used between BEFORE and this sample, per group, plus ``bench`` and ``other``.

        A group or part missing from BEFORE (started in between) counts from zero;
        parts come last, named as given (``worker:main``).
        ``other`` is what the rest of the machine used: other users' work competes
        for the same cores and is reported so a reader can judge the figures.
        """
        used = {name: round(value - before.groups.get(name, 0.0), 2) for name, value in self.groups.items()}
        used["bench"] = round(self.own - before.own, 2)
        ours = sum(used.values())
        used["other"] = round(max(0.0, self.machine - before.machine - ours), 2)
        for name, value in self.parts.items():
            used[name] = round(value - before.parts.get(name, 0.0), 2)
        return used
