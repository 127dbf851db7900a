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
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jinja2
import redis
from pydantic import ValidationError

from neoforge.errors import (
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    SetupError,
    TransientDeliveryError,
)
from neoforge.logs import log_event
from neoforge.message import EmailRequest
from neoforge.mime import build
from neoforge.recipients import Envelope, plan
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
from neoforge.runtime import Runtime
from neoforge.settings import Settings
from neoforge.smtp.dialogue import Accepted, deliver
from neoforge.staging import envelope
from neoforge.store import StatusStore, event, iso
from neoforge.store.ledger import take
from neoforge.templates import Rendered, render

__all__ = ["Attempting", "Job", "Outcome", "begin", "budget", "finish", "persist", "run", "run_many"]

logger = logging.getLogger(__name__)

Kind = Literal["sent", "retry", "failed", "done", "busy", "unavailable"]


@dataclass(frozen=True)
class Outcome:
    """How one look at one email ended.

    - ``sent``: the server took it.
    - ``retry``: a transient failure, recorded; look again in ``delay`` seconds.
    - ``failed``: a dead letter now (``error`` says why).
    - ``done``: nothing to do; ``status`` is the record's (sent before, scheduled, missing, ...).
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

    async def send(self, runtime: Runtime, bulk: bool = False) -> Accepted:
        """Hand the message to the SMTP server (on the sender loop)."""
        store, email_id, number = runtime.store, self.email_id, self.number

        async def mark_data() -> None:
            # A blocking Redis write, kept off the sender loop: it carries
            # every dialogue of the process.
            await asyncio.to_thread(store.mark_data_started, email_id, number)

        timeout = max(0.5, self.deadline - time.monotonic())
        pool, sender = runtime.sender.pool, runtime.settings.smtp_from
        return await deliver(pool, sender, self.data, self.envelope.addresses, timeout, bulk, mark_data)


def budget(settings: Settings) -> float:
    """Seconds one attempt may take: well inside its lease (time limit + 5 s)."""
    # Prefork's hard time limit is a backstop only, and the threads pool has none.
    limit = settings.email_task_time_limit
    return limit - min(10.0, limit / 4)


def begin(runtime: Runtime, email_id: str, worker: str, deadline: float | None = None) -> Job | Outcome:
    """Take EMAIL_ID's lease and prepare it: a Job to send, or the Outcome if there is nothing to send."""
    settings, store = runtime.settings, runtime.store
    try:
        if runtime.journal.holds(email_id):
            # This host's journal has its acceptance (Redis refused the record): sent, not again.
            runtime.journal.replay(store)
            return Outcome("done", email_id, status="sent")
        paused = runtime.breaker.wait_for()
        if paused > 0:
            # Sending is paused (a setup failure): wait, attempt nothing, count nothing.
            return Outcome("busy", email_id, status="paused", delay=_spread(paused))
        taken = take(store, email_id, worker, settings.email_task_time_limit + 5)
        if taken.status == "unknown":
            # The last attempt's sender went away after DATA began.
            if settings.email_unknown_outcome == "dead_letter":
                record_lost_in_data(store, email_id, taken.number, worker)
                error = PermanentDeliveryError("outcome unknown: sender stopped after DATA began", None,
                                               ErrorClass.OUTCOME_UNKNOWN)  # fmt: skip
                return Outcome("failed", email_id, taken.number, "failed", error=error)
            text = f"outcome unknown: attempt {taken.number}'s sender stopped after DATA began; sent again"
            store.retry_unknown(email_id, event("unknown", text, ErrorClass.OUTCOME_UNKNOWN, worker))
            log_event(logger, "email.outcome_unknown", logging.WARNING, id=email_id, attempt=taken.number,
                      policy="retry", worker=worker)  # fmt: skip
            taken = take(store, email_id, worker, settings.email_task_time_limit + 5)
    except redis.RedisError as exc:
        return Outcome("unavailable", email_id, cause=exc)
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
    attempting = Attempting(email_id, taken.number, taken.created, taken.priority, worker)
    try:
        data, envelope = _prepare(email_id, taken.payload, taken.todo, taken.outcomes, settings)
    except PermanentDeliveryError as exc:
        return _fail(store, attempting, exc)
    except Exception as exc:  # a defect of ours: this email only
        logger.exception("email.internal_error id=%s", email_id)
        return _failed(email_id, attempting.number, record_internal(store, attempting, exc))
    return Job(email_id, taken.number, taken.created, taken.priority, worker, attempting.started,
               attempting.t0, data=data, envelope=envelope, deadline=deadline)  # fmt: skip


def finish(runtime: Runtime, job: Job, result: Accepted | BaseException) -> Outcome:
    """Record how JOB's dialogue ended (the server's acceptance, or the exception it raised)."""
    store, settings = runtime.store, runtime.settings
    try:
        if isinstance(result, Accepted):
            return _finish_accepted(runtime, job, result)
        if isinstance(result, SetupError):
            left = runtime.breaker.trip(result)
            next_at = iso(datetime.now(UTC) + timedelta(seconds=left))
            entry = job.entry(
                "paused", error=str(result), smtp_code=result.code, error_class=result.error_class
            )
            persist(lambda: store.mark_paused(job.email_id, entry, next_at))
            return Outcome("busy", job.email_id, job.number, "paused", delay=_spread(left), error=result)
        if isinstance(result, TransientDeliveryError):
            if job.number > settings.email_max_retries:
                return _fail(store, job, result, reason="retries exhausted")
            delay = record_retry(store, job, result, settings)
            return Outcome("retry", job.email_id, job.number, "retrying", delay=delay, error=result)
        if isinstance(result, PermanentDeliveryError):
            if result.error_class == ErrorClass.OUTCOME_UNKNOWN and settings.email_unknown_outcome == "retry":
                # At least once, as mail servers behave: sent again (documented).
                return finish(
                    runtime, job, TransientDeliveryError(str(result), result.code, result.error_class)
                )
            return _fail(store, job, result)
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
        return _failed(job.email_id, job.number, record_internal(store, job, result))
    except redis.RedisError as exc:
        return Outcome("unavailable", job.email_id, job.number, cause=exc)


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
    started (``unavailable``).
    """
    budget_s = budget(runtime.settings)
    deadline = time.monotonic() + budget_s
    outcomes: dict[str, Outcome] = {}
    flying: dict[concurrent.futures.Future[Accepted], Job] = {}
    down: BaseException | None = None
    for email_id in email_ids:
        if down is not None:
            outcomes[email_id] = Outcome("unavailable", email_id, cause=down)
            continue
        if deadline - time.monotonic() < budget_s / 2:
            outcomes[email_id] = Outcome("busy", email_id)
            continue
        started = begin(runtime, email_id, worker, deadline)
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


def _prepare(
    email_id: str, payload: str, todo: str, outcomes: str, settings: Settings
) -> tuple[bytes, Envelope]:
    """The MIME message's bytes, and who it goes to this time (TODO: those left by a partial delivery).

    Built in the calling thread, not on the sender loop: the loop carries
    every dialogue of the process and must not wait for CPU work.
    """
    try:
        request = EmailRequest.model_validate_json(payload)
        body = render(request.template, request.context) if request.template is not None else Rendered(
            html=request.html, text=request.text)  # fmt: skip
        data = build(email_id, request, body, settings).as_bytes()
    except (ValidationError, jinja2.TemplateError, ValueError, TypeError, LookupError) as exc:
        raise PermanentDeliveryError(
            f"message cannot be built: {type(exc).__name__}", None, ErrorClass.INVALID
        ) from exc
    if len(data) > settings.email_max_message_bytes:
        limit = settings.email_max_message_bytes
        text = f"message of {len(data)} bytes is larger than EMAIL_MAX_MESSAGE_BYTES ({limit})"
        raise PermanentDeliveryError(text, None, ErrorClass.SIZE)
    recipients, held = envelope(request.recipients(), settings)
    if not recipients:
        raise PermanentDeliveryError("no recipient in EMAIL_ALLOWED_DOMAINS", None, ErrorClass.NOT_ALLOWED)
    return data, plan(recipients, held, todo, outcomes)


def _spread(seconds: float) -> float:
    """SECONDS plus up to a tenth more, so waiting emails do not all come back at once."""
    return seconds + random.random() * max(0.5, seconds / 10)


def _finish_accepted(runtime: Runtime, job: Job, accepted: Accepted) -> Outcome:
    """The server answered every recipient: sent, or some deferred (retried alone), or all refused."""
    store, settings = runtime.store, runtime.settings
    deferred, fields, delivered = job.envelope.settle(accepted)
    if accepted.reply is not None:
        runtime.breaker.succeeded()
    if not deferred:
        if accepted.reply is None:  # every recipient refused for good
            refused = PermanentDeliveryError(
                "every recipient refused: " + replies(accepted.rejected), None, ErrorClass.RECIPIENT_REJECTED
            )
            return _fail(store, job, refused, fields)
        record_success(store, job, accepted.reply, fields, delivered, runtime.journal)
        return Outcome("sent", job.email_id, job.number, "sent")
    who = "every recipient" if accepted.reply is None else f"{len(deferred)} recipient(s)"
    codes = [int(r["code"]) for r in accepted.deferred]
    error = TransientDeliveryError(
        f"{who} deferred: {replies(accepted.deferred)}", min(codes), ErrorClass.SMTP_4XX
    )
    if job.number > settings.email_max_retries:
        return _fail(store, job, error, fields, reason="retries exhausted")
    delay = record_retry(store, job, error, settings, fields)
    return Outcome("retry", job.email_id, job.number, "retrying", delay=delay, error=error)


def _fail(
    store: StatusStore,
    job: Attempting,
    exc: DeliveryError,
    fields: dict[str, str] | None = None,
    **extra: Any,
) -> Outcome:
    record_failure(store, job, exc, fields, **extra)
    return _failed(job.email_id, job.number, exc)


def _failed(email_id: str, number: int, error: DeliveryError) -> Outcome:
    return Outcome("failed", email_id, number, "failed", error=error)
