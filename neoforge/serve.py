"""The production API server: ``neoforge serve``, uvicorn with one process per core.

One uvicorn process saturates one core (bench/ scenario e), so by default the
API runs as many as this process may use. Every process shares what must be
shared through Redis: per-key rate limits, metrics (read from Redis at scrape
time), the console's signing secret and sign-in limits, idempotency keys.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["default_workers", "uvicorn_command"]

APP = "neoforge.main:app"


def default_workers(embedded_worker: bool) -> int:
    """One process per core this process may run on; one with EMBEDDED_WORKER (a worker per process)."""
    if embedded_worker:
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def uvicorn_command(extra: Sequence[str], embedded_worker: bool) -> list[str]:
    """uvicorn's command line for the API; EXTRA (uvicorn's own options) or WEB_CONCURRENCY win."""
    command = [sys.executable, "-m", "uvicorn", APP]
    named = any(arg == "--workers" or arg.startswith("--workers=") for arg in extra)
    if not named and "WEB_CONCURRENCY" not in os.environ:
        command += ["--workers", str(default_workers(embedded_worker))]
    return command + list(extra)
