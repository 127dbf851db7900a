"""What happens to one email in a worker: take it, build it, send it, record the outcome.

Written once, used by every path (a single email, a bulk batch, a retry, a
requeue). ``begin`` takes the email's lease and prepares it; ``Job.send`` is
the SMTP dialogue (run on the process's sender loop); ``finish`` records what
happened and returns a typed ``Outcome``, which the Celery glue (tasks/) turns
into an acknowledgement, a retry or a rejection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import redis

from neoforge.endpoints import Endpoint
from neoforge.errors import (
    DeliveryError,
    ErrorClass,
    LeaseLost,
    PermanentDeliveryError,
    SetupError,
    TransientDeliveryError,
)
from neoforge.events import EventType, announce
from neoforge.logs import log_event
from neoforge.policy import divert, pace, too_much_mail_refusal
from neoforge.preparing import prepare
from neoforge.recipients import Envelope
from neoforge.recording import (
    Attempting,
    persist,
    record_failure,
    record_internal,
    record_lost_in_data,
    record_retry,
    record_success,
    replies,
)
from neoforge.retry import budget, spread
from neoforge.runtime import Runtime
from neoforge.smtp.dialogue import Accepted, deliver
from neoforge.store import event, iso
from neoforge.store.ledger import take
from neoforge.suppression import suppress_bounces

__all__ = ["Attempting", "Job", "Outcome", "begin", "finish", "persist", "run", "run_many"]

logger = logging.getLogger(__name__)

Kind = Literal["sent", "retry", "failed", "done", "busy", "unavailable"]


@dataclass(frozen=True)
class Outcome:
    """How one look at one email ended.

    - ``sent``: the server took it.
    - ``retry``: a transient failure, recorded; look again in ``delay`` seconds.
    - ``failed``: a dead letter now (``error`` says why).
    - ``done``: nothing to do; ``status`` is the record's (sent before, scheduled, missing, ...),
      or ``taken_over``: another sender took the email over, this attempt's writes were refused.
    - ``busy``: another sender holds its lease; look again in ``delay`` seconds.
    - ``unavailable``: Redis could not be reached (``cause``); nothing was sent: hand the message back.
    """

    kind: Kind
    email_id: str
    attempt: int = 0
    status: str = ""
    delay: float = 0.0
    error: DeliveryError | None = None
    cause: BaseException | None = None

    def result(self) -> dict[str, Any]:
        """The task's return value: the email's id, status and attempt (no address, no body)."""
        return {"id": self.email_id, "status": self.status or self.kind, "attempt": self.attempt}


@dataclass(kw_only=True)
class Job(Attempting):
    """An email whose lease we hold, prepared and ready to send."""

    data: bytes
    envelope: Envelope
    deadline: float
    endpoint: Endpoint

    async def send(self, runtime: Runtime, bulk: bool = False) -> Accepted:
        """Hand the message to the SMTP server (on the sender loop)."""
        store, email_id, number, fence = runtime.store, self.email_id, self.number, self.fence

        async def mark_data() -> None:
            # A blocking Redis write, kept off the sender loop: it carries
            # every dialogue of the process. Refused (LeaseLost) once another
            # sender took the email over: then the dialogue ends before DATA.
            await asyncio.to_thread(store.mark_data_started, email_id, number, fence)

        timeout = max(0.5, self.deadline - time.monotonic())
        pool, sender = runtime.sender.pools[self.endpoint.name], runtime.settings.smtp_from
        return await deliver(pool, sender, self.data, self.envelope.addresses, timeout, bulk, mark_data)


def begin(
    runtime: Runtime, email_id: str, worker: str, deadline: float | None = None,
    endpoint: Endpoint | None = None, paid: bool = False,
) -> Job | Outcome:  # fmt: skip
    """Take EMAIL_ID's lease and prepare it: a Job to send, or the Outcome if there is nothing to send.

    ENDPOINT: the provider to use (default: the providers' choice); PAID: its
    rate-limit token was taken already (a bulk batch takes them all at once).
    """
    settings, store = runtime.settings, runtime.store
    try:
        if runtime.journal.holds(email_id):
            # This host's journal has its acceptance (Redis refused the record): sent, not again.
            runtime.journal.replay(store)
            return Outcome("done", email_id, status="sent")
        paused = runtime.breaker.wait_for()
        if paused > 0:
            # Sending is paused (a setup failure): wait, attempt nothing, count nothing.
            return Outcome("busy", email_id, status="paused", delay=spread(paused))
        route = endpoint if endpoint is not None else runtime.providers.choose()
        if not isinstance(route, Endpoint):
            # Every provider's circuit is open: wait for the first to end.
            return Outcome("busy", email_id, status="paused", delay=spread(route))
        runtime.heartbeat.ensure()
        lease, heartbeat = settings.email_task_time_limit + 5, settings.email_heartbeat_timeout
        taken = take(store, email_id, worker, lease, heartbeat)
        if taken.status == "unknown":
            # The last attempt's sender went away after DATA began.
            if settings.email_unknown_outcome == "dead_letter":
                record_lost_in_data(store, email_id, taken.number, worker, taken.fence)
                error = PermanentDeliveryError("outcome unknown: sender stopped after DATA began", None,
                                               ErrorClass.OUTCOME_UNKNOWN)  # fmt: skip
                _tell(runtime, "failed", Attempting(email_id, taken.number, 0.0, "", worker), "failed", error)
                return Outcome("failed", email_id, taken.number, "failed", error=error)
            text = f"outcome unknown: attempt {taken.number}'s sender stopped after DATA began; sent again"
            entry = event("unknown", text, ErrorClass.OUTCOME_UNKNOWN, worker)
            store.retry_unknown(email_id, entry, taken.fence)
            log_event(logger, "email.outcome_unknown", logging.WARNING, id=email_id, attempt=taken.number,
                      policy="retry", worker=worker)  # fmt: skip
            taken = take(store, email_id, worker, lease, heartbeat)
    except redis.RedisError as exc:
        return Outcome("unavailable", email_id, cause=exc)
    except LeaseLost as exc:
        return _fenced(exc, worker)
    if taken.status == "expired_now":
        log_event(logger, "email.expired", id=email_id, status="expired")
        announce(settings, "expired", email_id, status="expired")
        return Outcome("done", email_id, status="expired")
    if taken.status == "leased":
        # Someone else is sending it right now. Look again once their lease
        # is over: by then it is sent, or their sender is gone.
        log_event(logger, "email.leased", id=email_id)
        return Outcome("busy", email_id, delay=max(1.0, taken.number / 1000))
    if taken.status != "sending" or taken.payload is None:
        log_event(logger, "email.skipped", id=email_id, status=taken.status)
        return Outcome("done", email_id, status=taken.status)
    log_event(logger, "email.sending", id=email_id, status="sending", attempt=taken.number, worker=worker)
    deadline = deadline if deadline is not None else time.monotonic() + budget(settings)
    attempting = Attempting(
        email_id, taken.number, taken.created, taken.priority, worker, provider=route.name, fence=taken.fence
    )
    try:
        data, envelope = prepare(runtime, email_id, taken.payload, taken.todo, taken.outcomes)
    except PermanentDeliveryError as exc:
        return _fail(runtime, attempting, exc)
    except redis.RedisError as exc:  # the suppression list could not be read: nothing was sent
        return Outcome("unavailable", email_id, attempting.number, cause=exc)
    except Exception as exc:  # a defect of ours: this email only
        logger.exception("email.internal_error id=%s", email_id)
        return _failed(runtime, attempting, record_internal(store, attempting, exc))
    if not envelope.targets:  # every recipient suppressed: no token, no connection
        return _suppressed(runtime, attempting, envelope)
    try:
        wait = pace(runtime, attempting, route, envelope.addresses, paid)
    except redis.RedisError as exc:
        return Outcome("unavailable", email_id, cause=exc)
    except LeaseLost as exc:
        return _fenced(exc, worker, taken.number)
    if wait is not None:
        return Outcome("busy", email_id, status="waiting", delay=spread(wait, 0.5))
    return Job(email_id, taken.number, taken.created, taken.priority, worker, attempting.started,
               attempting.t0, route.name, taken.fence, data=data, envelope=envelope, deadline=deadline,
               endpoint=route)  # fmt: skip


def finish(runtime: Runtime, job: Job, result: Accepted | BaseException) -> Outcome:
    """Record how JOB's dialogue ended (the server's acceptance, or the exception it raised)."""
    store, settings = runtime.store, runtime.settings
    try:
        if isinstance(result, LeaseLost):
            # The DATA mark was refused: another sender took the email over; nothing was sent.
            return _fenced(result, job.worker, job.number)
        if isinstance(result, Accepted):
            return _finish_accepted(runtime, job, result)
        if isinstance(result, DeliveryError) and (moved := divert(runtime, job, job.endpoint, result)):
            return Outcome("busy", job.email_id, job.number, moved[0], delay=moved[1], error=result)
        if isinstance(result, SetupError):
            left = runtime.breaker.trip(result)
            next_at = iso(datetime.now(UTC) + timedelta(seconds=left))
            entry = job.entry(
                "paused", error=str(result), smtp_code=result.code, error_class=result.error_class
            )
            persist(lambda: store.mark_paused(job.email_id, entry, next_at, job.fence))
            return Outcome("busy", job.email_id, job.number, "paused", delay=spread(left), error=result)
        if isinstance(result, TransientDeliveryError):
            if job.number > settings.email_max_retries:
                return _fail(runtime, job, result, reason="retries exhausted")
            delay = record_retry(store, job, result, settings)
            _tell(runtime, "deferred", job, "retrying", result, retry_in=round(delay, 3))
            return Outcome("retry", job.email_id, job.number, "retrying", delay=delay, error=result)
        if isinstance(result, PermanentDeliveryError):
            if result.error_class == ErrorClass.OUTCOME_UNKNOWN and settings.email_unknown_outcome == "retry":
                # At least once, as mail servers behave: sent again (documented).
                return finish(
                    runtime, job, TransientDeliveryError(str(result), result.code, result.error_class)
                )
            return _fail(runtime, job, result)
        if isinstance(result, concurrent.futures.CancelledError):
            # The process is shutting down mid-dialogue: hand the message back;
            # the ledger's DATA mark decides what the next attempt may do.
            return Outcome("unavailable", job.email_id, job.number, cause=result)
        if isinstance(result, redis.RedisError):
            # The ledger mark before DATA failed: nothing was sent.
            log_event(logger, "email.requeued", logging.WARNING, id=job.email_id,
                      reason=type(result).__name__)  # fmt: skip
            return Outcome("unavailable", job.email_id, job.number, cause=result)
        if not isinstance(result, Exception):
            raise result
        logger.error("email.internal_error id=%s", job.email_id, exc_info=result)
        return _failed(runtime, job, record_internal(store, job, result))
    except redis.RedisError as exc:
        return Outcome("unavailable", job.email_id, job.number, cause=exc)
    except LeaseLost as exc:
        return _fenced(exc, job.worker, job.number)


def run(runtime: Runtime, email_id: str, worker: str) -> Outcome:
    """Deliver one email now: begin, send on the sender loop, finish."""
    started = begin(runtime, email_id, worker)
    if isinstance(started, Outcome):
        return started
    try:
        accepted: Accepted | BaseException = runtime.run(started.send(runtime))
    except Exception as exc:
        accepted = exc
    return finish(runtime, started, accepted)


def run_many(
    runtime: Runtime, email_ids: Sequence[str], worker: str, *, bulk: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:  # fmt: skip
    """Deliver many emails side by side (one dialogue each on the sender loop); one Outcome per id.

    Emails that cannot start in the first half of the time budget are left
    for later (``busy`` with no delay). Once Redis fails, the rest are not
    started (``unavailable``). The provider's rate-limit tokens are taken
    for the whole batch at once; emails beyond those granted wait (``busy``).
    """
    budget_s = budget(runtime.settings)
    deadline = time.monotonic() + budget_s
    outcomes: dict[str, Outcome] = {}
    flying: dict[concurrent.futures.Future[Accepted], Job] = {}
    down: BaseException | None = None
    route: Endpoint | float = 0.0
    granted, wait = 0, 0.0
    try:
        route = runtime.providers.choose()
        if isinstance(route, Endpoint):
            priority = "bulk" if bulk else "transactional"
            granted, wait = runtime.pacer.take(route, priority, count=len(email_ids), partial=True)
    except redis.RedisError as exc:
        down = exc
    for number, email_id in enumerate(email_ids):
        if down is not None:
            outcomes[email_id] = Outcome("unavailable", email_id, cause=down)
            continue
        if not isinstance(route, Endpoint) or number >= granted:
            delay = route if not isinstance(route, Endpoint) else wait
            outcomes[email_id] = Outcome("busy", email_id, status="waiting", delay=spread(delay, 0.5))
            continue
        if deadline - time.monotonic() < budget_s / 2:
            outcomes[email_id] = Outcome("busy", email_id)
            continue
        started = begin(runtime, email_id, worker, deadline, route, paid=True)
        if isinstance(started, Outcome):
            outcomes[email_id] = started
            down = started.cause if started.kind == "unavailable" else None
            continue
        flying[runtime.sender.submit(started.send(runtime, bulk))] = started
    for future in concurrent.futures.as_completed(flying):
        job = flying[future]
        try:
            result: Accepted | BaseException = future.result()
        except Exception as exc:
            result = exc
        outcomes[job.email_id] = finish(runtime, job, result)
    ordered = [outcomes[email_id] for email_id in email_ids if email_id in outcomes]
    if on_outcome is not None:
        for outcome in ordered:
            on_outcome(outcome)
    return ordered


def _fenced(exc: LeaseLost, worker: str, number: int = 0) -> Outcome:
    """Another sender took the email over: this attempt's write was refused, so it ends here."""
    log_event(logger, "email.fenced", logging.WARNING, id=exc.email_id, attempt=number, write=exc.write,
              worker=worker)  # fmt: skip
    return Outcome("done", exc.email_id, number, "taken_over")


def _finish_accepted(runtime: Runtime, job: Job, accepted: Accepted) -> Outcome:
    """The server answered every recipient: sent, or some deferred (retried alone), or all refused."""
    store, settings = runtime.store, runtime.settings
    throttled = too_much_mail_refusal(accepted)
    if throttled is not None and (moved := divert(runtime, job, job.endpoint, throttled)):
        return Outcome("busy", job.email_id, job.number, moved[0], delay=moved[1], error=throttled)
    deferred, fields, delivered = job.envelope.settle(accepted)
    try:
        if accepted.reply is not None:
            runtime.breaker.succeeded()
            runtime.providers.succeeded(job.endpoint)
        suppress_bounces(runtime.redis, accepted.rejected, runtime.settings)
    except redis.RedisError as exc:
        # Hints for later sends only: a refused write here (a full disk, MISCONF) must not turn
        # a message the server accepted into a requeue, and so a second copy. The outcome below
        # is recorded, or journaled when Redis refuses it too.
        log_event(logger, "email.hint_unrecorded", logging.WARNING, id=job.email_id,
                  reason=type(exc).__name__)  # fmt: skip
    if not deferred:
        if accepted.reply is None:  # every recipient refused for good
            refused = PermanentDeliveryError(
                "every recipient refused: " + replies(accepted.rejected), None, ErrorClass.RECIPIENT_REJECTED
            )
            return _fail(runtime, job, refused, fields)
        record_success(store, job, accepted.reply, fields, delivered, runtime.journal)
        _tell(runtime, "sent", job, "sent", delivered=delivered)
        return Outcome("sent", job.email_id, job.number, "sent")
    who = "every recipient" if accepted.reply is None else f"{len(deferred)} recipient(s)"
    codes = [int(r["code"]) for r in accepted.deferred]
    error = TransientDeliveryError(
        f"{who} deferred: {replies(accepted.deferred)}", min(codes), ErrorClass.SMTP_4XX
    )
    if job.number > settings.email_max_retries:
        return _fail(runtime, job, error, fields, reason="retries exhausted")
    delay = record_retry(store, job, error, settings, fields)
    _tell(runtime, "deferred", job, "retrying", error, retry_in=round(delay, 3))
    return Outcome("retry", job.email_id, job.number, "retrying", delay=delay, error=error)


def _fail(
    runtime: Runtime,
    job: Attempting,
    exc: DeliveryError,
    fields: dict[str, str] | None = None,
    **extra: Any,
) -> Outcome:
    record_failure(runtime.store, job, exc, fields, **extra)
    return _failed(runtime, job, exc)


def _failed(runtime: Runtime, job: Attempting, error: DeliveryError) -> Outcome:
    _tell(runtime, "failed", job, "failed", error)
    return Outcome("failed", job.email_id, job.number, "failed", error=error)


def _suppressed(runtime: Runtime, job: Attempting, envelope: Envelope) -> Outcome:
    """Every recipient left is suppressed: the email ends ``suppressed`` (``sent`` if some got it before)."""
    fields, delivered = envelope.fields()
    entry = job.entry("suppressed", delivered=delivered)
    if delivered != "none":
        record_success(runtime.store, job, "", fields, delivered, runtime.journal)
        return Outcome("sent", job.email_id, job.number, "sent")
    persist(lambda: runtime.store.mark_suppressed(job.email_id, entry, job.priority, fields, job.fence))
    log_event(logger, "email.suppressed", id=job.email_id, status="suppressed", worker=job.worker)
    _tell(runtime, "suppressed", job, "suppressed", envelope=envelope)
    return Outcome("done", job.email_id, job.number, "suppressed")


def _tell(
    runtime: Runtime, kind: EventType, job: Attempting, status: str, error: DeliveryError | None = None,
    envelope: Envelope | None = None, **details: Any,
) -> None:  # fmt: skip
    """Announce KIND for JOB (neoforge/events.py): the signal, and the webhook if one is set."""
    envelope = envelope or (job.envelope if isinstance(job, Job) else None)
    recipients = envelope.report() if envelope is not None else []
    if error is not None:
        details.update(error=str(error), error_class=str(error.error_class), smtp_code=error.code)
    announce(runtime.settings, kind, job.email_id, status=status, attempt=job.number, priority=job.priority,
             recipients=recipients, **details)  # fmt: skip
