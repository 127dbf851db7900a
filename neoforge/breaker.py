"""The sending pause: after a setup failure (login refused, TLS), no worker contacts the server
until the pause ends; then one probe at a time tries, and the first success resumes sending.

Shared by every worker through Redis (``neoforge:smtp:paused``), so a wrong
password does not burn the queue one email at a time: emails wait, none is
dead-lettered for it, and the pause doubles while probes keep failing (up to
SMTP_PAUSE_MAX_SECONDS). A process remembers "not paused" for a second, so
the check costs no round trip per email while all is well.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from neoforge.errors import SetupError
from neoforge.logs import log_event
from neoforge.settings import Settings
from neoforge.store.keys import METRICS, SMTP_PAUSED, SMTP_PROBE
from neoforge.store.scripts import Scripts

__all__ = ["Breaker", "Pause"]

logger = logging.getLogger(__name__)

_TRUST_CLEAR_SECONDS = 1.0
_PROBE_SECONDS = 60


@dataclass(frozen=True)
class Pause:
    """Sending is paused until ``until`` (epoch seconds) because of ``error_class``."""

    until: float
    error_class: str
    reason: str


class Breaker:
    """This process's view of the shared sending pause."""

    def __init__(self, client: redis.Redis, scripts: Scripts, settings: Settings) -> None:
        self.client = client
        self.scripts = scripts
        self.settings = settings
        self.token = uuid.uuid4().hex
        self._clear_until = 0.0
        self._lock = threading.Lock()

    def current(self) -> Pause | None:
        """The pause in force (its end may have passed: then a probe may go), or None."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(SMTP_PAUSED)
            pipe.time()
            found, (seconds, micros) = pipe.execute()
        if not found or "until" not in found:
            return None
        # The end is Redis's time: as this host's clock reads it.
        until = float(found["until"]) + time.time() - (seconds + micros / 1e6)
        return Pause(until, str(found.get("error_class", "")), str(found.get("reason", "")))

    def wait_for(self) -> float:
        """0 if this email may contact the server now; else seconds to wait before looking again."""
        if time.monotonic() < self._clear_until:
            return 0.0
        pause = self.current()
        if pause is None:
            with self._lock:
                self._clear_until = time.monotonic() + _TRUST_CLEAR_SECONDS
            return 0.0
        left = pause.until - time.time()
        if left > 0:
            return left
        # The pause is over: one probe at a time, the others wait a little.
        if self.client.set(SMTP_PROBE, self.token, nx=True, ex=_PROBE_SECONDS) or (
            self.client.get(SMTP_PROBE) == self.token
        ):
            return 0.0
        return min(5.0, self.settings.smtp_pause_seconds)

    def trip(self, error: SetupError) -> float:
        """Pause sending (or keep the pause going) after ERROR; return seconds until it ends."""
        s = self.settings
        until, now = self.scripts.pause(
            keys=[SMTP_PAUSED, SMTP_PROBE, METRICS],
            args=["", s.smtp_pause_seconds, s.smtp_pause_max_seconds, error.error_class, str(error)[:300]],
        )
        with self._lock:
            self._clear_until = 0.0
        left = max(0.0, float(until) - float(now))
        log_event(logger, "smtp.paused", logging.ERROR, error_class=error.error_class, seconds=round(left, 1))
        return left

    def succeeded(self) -> None:
        """A delivery went through: end any pause (a probe succeeded)."""
        if time.monotonic() < self._clear_until:
            return
        if self.client.delete(SMTP_PAUSED, SMTP_PROBE):
            log_event(logger, "smtp.resumed")
        with self._lock:
            self._clear_until = time.monotonic() + _TRUST_CLEAR_SECONDS
