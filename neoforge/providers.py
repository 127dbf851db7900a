"""Failover between SMTP providers: a circuit breaker per provider, shared by every worker through Redis.

With SMTP_URLS naming several providers, each email goes to the first whose
circuit is closed (SMTP_STRATEGY=failover) or to each in turn
(round_robin). A connection failure, a timeout, a TLS or login failure, or
SMTP_FAILOVER_4XX 4xx replies within a minute open that provider's circuit
(neoforge/store/lua/circuit.lua): sending moves to the next at once, and the
email that met the failure goes there without spending a retry. Once the
circuit's time is up one email at a time probes the provider; the first
delivery through it closes the circuit, and failover sends to it again.

With one provider there is nothing to fail over to: a setup failure pauses
sending (neoforge/breaker.py) and other failures are retried, as before.
A process reads the circuits at most once a second.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid

import redis

from neoforge.endpoints import Endpoint
from neoforge.errors import DeliveryError, ErrorClass
from neoforge.logs import log_event
from neoforge.settings import Settings
from neoforge.store.keys import METRICS, circuit_keys
from neoforge.store.scripts import Scripts

__all__ = ["Providers"]

logger = logging.getLogger(__name__)

_READ_EVERY = 1.0
_PROBE_SECONDS = 60
_STORM_WINDOW = 60.0
# Failures that move sending at once: the provider cannot be reached or will not let us in.
_AT_ONCE = {ErrorClass.CONNECTION, ErrorClass.TIMEOUT, ErrorClass.TLS, ErrorClass.AUTH}


class Providers:
    """This process's view of the providers and their circuits."""

    def __init__(self, client: redis.Redis, scripts: Scripts, settings: Settings) -> None:
        self.client = client
        self.scripts = scripts
        self.settings = settings
        self.endpoints = settings.endpoints()
        self.token = uuid.uuid4().hex
        self._open: dict[str, float] = {}  # name -> end of its circuit (this host's clock)
        self._read_at = float("-inf")
        self._turn = itertools.count()
        self._lock = threading.Lock()

    @property
    def several(self) -> bool:
        return len(self.endpoints) > 1

    def choose(self) -> Endpoint | float:
        """The provider for the next email, or the seconds to wait while every circuit is open."""
        if not self.several:
            return self.endpoints[0]
        self._read()
        order = self.endpoints
        if self.settings.smtp_strategy == "round_robin":
            start = next(self._turn) % len(order)
            order = order[start:] + order[:start]
        now = time.time()
        for endpoint in order:
            until = self._open.get(endpoint.name)
            if until is None:
                return endpoint
            if until <= now and self._probe(endpoint):
                return endpoint
        return max(0.5, min(self._open.values()) - now)

    def failed(self, endpoint: Endpoint, error: DeliveryError) -> bool:
        """Count ERROR against ENDPOINT; True when its circuit is open now (send elsewhere)."""
        if not self.several:
            return False
        if error.error_class in _AT_ONCE:
            threshold = 1
        elif error.error_class == ErrorClass.SMTP_4XX:
            threshold = self.settings.smtp_failover_4xx
        else:
            return False
        s = self.settings
        circuit, probe = circuit_keys(endpoint.name)
        is_open, seconds = self.scripts.circuit(
            keys=[circuit, probe, METRICS],
            args=[threshold, _STORM_WINDOW, s.smtp_failover_seconds, s.smtp_pause_max_seconds, endpoint.name,
                  error.error_class],
        )  # fmt: skip
        if not int(is_open):
            return False
        with self._lock:
            self._open[endpoint.name] = time.time() + float(seconds)
        log_event(logger, "smtp.failover", logging.WARNING, provider=endpoint.name,
                  error_class=error.error_class, seconds=round(float(seconds), 1))  # fmt: skip
        return True

    def succeeded(self, endpoint: Endpoint) -> None:
        """A delivery went through ENDPOINT: close its circuit if this process saw it open."""
        if endpoint.name not in self._open:
            return
        circuit, probe = circuit_keys(endpoint.name)
        if self.client.delete(circuit, probe):
            log_event(logger, "smtp.provider_back", provider=endpoint.name)
        with self._lock:
            self._open.pop(endpoint.name, None)

    def _read(self) -> None:
        # Every circuit in one round trip, with the server's clock: ends are server times.
        if time.monotonic() - self._read_at < _READ_EVERY:
            return
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for endpoint in self.endpoints:
                pipe.hget(circuit_keys(endpoint.name)[0], "until")
            replies = pipe.execute()
        seconds, micros = replies[0]
        offset = time.time() - (seconds + micros / 1e6)
        found = {
            endpoint.name: float(until) + offset
            for endpoint, until in zip(self.endpoints, replies[1:], strict=True)
            if until is not None
        }
        with self._lock:
            self._open = found
            self._read_at = time.monotonic()

    def _probe(self, endpoint: Endpoint) -> bool:
        # One email at a time tries a provider whose circuit's time is up.
        probe = circuit_keys(endpoint.name)[1]
        return bool(self.client.set(probe, self.token, nx=True, ex=_PROBE_SECONDS)) or (
            self.client.get(probe) == self.token
        )
