"""The retry policy: how long to wait before the next attempt."""

from __future__ import annotations

import random
from collections.abc import Callable

from neoforge.settings import Settings

__all__ = ["budget", "retry_delay", "spread"]


def retry_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ATTEMPT (1-based).

    Exponential (base, 2*base, 4*base, ...) up to CAP, with "equal jitter":
    a random point in the upper half of that window, so workers that failed
    together do not retry together, and no retry comes sooner than half the
    window. Celery's own ``retry_backoff`` is not used because it rounds the
    factor to whole seconds (at least 1) and its full jitter may retry at once
    (celery/app/autoretry.py).
    """
    window = min(cap, base * 2 ** (attempt - 1))
    return float(window / 2 + rand() * window / 2)


def budget(settings: Settings) -> float:
    """Seconds one attempt may take: well inside its lease (time limit + 5 s)."""
    # Prefork's hard time limit is a backstop only, and the threads pool has none.
    limit = settings.email_task_time_limit
    return limit - min(10.0, limit / 4)


def spread(seconds: float, least: float = 0.5) -> float:
    """SECONDS plus up to a tenth more (at least LEAST), so waiting emails do not all come back at once."""
    return seconds + random.random() * max(least, seconds / 10)
