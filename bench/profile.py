"""Where a worker's CPU goes: py-spy samples of our worker during a scenario, summarised.

``python -m bench.run --profile`` records our first worker process with py-spy
(``--gil``: only the thread holding the GIL is sampled, so the shares are of
the process's CPU, not of its waiting) for a few seconds once it has made its
first delivery, and prints which code the samples were in: by package of the
innermost frame (who burns the CPU), and the share of a few entry points
(where in our pipeline it happens). Raw samples stay in bench/results/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Profile", "PySpy", "summarise"]

# Entry points worth a line of their own: function name -> what it stands for.
_ENTRIES = {
    "Consumer.start": "Celery's consumer (fetch, dispatch, ack)",
    "send_email": "our send_email task (all of it)",
    "send_batch": "our send_batch task (all of it)",
    "_send": "MIME build + SMTP dialogue (sender loop)",
    "build": "MIME build (neoforge/mime.py, email package)",
    "Message.as_bytes": "MIME serialisation (email package)",
    "_transmit": "SMTP dialogue (aiosmtplib)",
    "store_result": "Celery result backend write",
    "_record_sent": "our ledger write after the 250",
    "_take": "our lease and 'sending' write",
    "begin_attempt": "our lease and 'sending' write",
}


@dataclass
class Profile:
    """A summary of one recording."""

    samples: int
    by_package: list[tuple[str, float]] = field(default_factory=list)
    entries: list[tuple[str, float]] = field(default_factory=list)
    raw: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        return {
            "samples": self.samples,
            "by_package": self.by_package,
            "entries": self.entries,
            "raw": self.raw,
        }

    def lines(self) -> list[str]:
        """The summary as readable lines."""
        if not self.samples:
            return ["no samples (py-spy could not attach?)"]
        top = ", ".join(f"{name} {share:.0%}" for name, share in self.by_package[:8])
        entries = ", ".join(f"{label} {share:.0%}" for label, share in self.entries)
        return [f"{self.samples} samples; innermost frame by package: {top}", f"entry points: {entries}"]


class PySpy:
    """A py-spy recording of one process, running in the background."""

    def __init__(self, pid: int, seconds: int, output: Path) -> None:
        self.output = output
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        output.parent.mkdir(parents=True, exist_ok=True)
        command = [binary, "record", "--gil", "--format", "raw", "--rate", "100",
                   "--duration", str(seconds), "--pid", str(pid), "--output", str(output)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, timeout: float = 60) -> Profile:
        """Wait for the recording to end; its summary."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return summarise(self.output)


def _frame(text: str) -> tuple[str, str]:
    """(function, file path) of one py-spy frame ``func (path:line)``."""
    name, _, rest = text.partition(" (")
    return name, rest.rpartition(":")[0]


def _package(path: str) -> str:
    """The top-level package or module of a frame's file (py-spy gives paths below site-packages)."""
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python" in path:
        path = path.split("/lib/python", 1)[1].split("/", 2)[-1]
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def summarise(raw: Path) -> Profile:
    """Summarise py-spy's raw (collapsed stacks) output at RAW."""
    if not raw.exists():
        return Profile(samples=0, raw=str(raw))
    packages: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the process
        if not frames:
            continue
        samples = int(count)
        total += samples
        packages[_package(frames[-1][1])] += samples
        for label in {_ENTRIES[name] for name, _ in frames if name in _ENTRIES}:
            entries[label] += samples
    if not total:
        return Profile(samples=0, raw=str(raw))
    return Profile(
        samples=total,
        by_package=[(name, round(n / total, 3)) for name, n in packages.most_common()],
        entries=[(label, round(n / total, 3)) for label, n in entries.most_common()],
        raw=str(raw),
    )
