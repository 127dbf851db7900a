"""What the sending policy makes an attempt do: wait for a rate limit, slow the provider down, move on.

Used by the per-email state machine (neoforge/attempt.py) at two points:
``pace`` once the lease is taken and the message built (is there a token for
this provider and these recipient domains?), and ``divert`` when a failure
concerns the provider rather than the email ("too much mail", or the
provider's circuit opening). Either way the email waits without spending a
retry: the attempt number is given back.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime, timedelta

from neoforge.endpoints import Endpoint
from neoforge.errors import DeliveryError, ErrorClass, TransientDeliveryError
from neoforge.logs import log_event
from neoforge.recording import Attempting, persist, replies
from neoforge.runtime import Runtime
from neoforge.smtp.classify import too_much_mail
from neoforge.smtp.dialogue import Accepted
from neoforge.store import iso

__all__ = ["divert", "pace", "too_much_mail_refusal"]

logger = logging.getLogger(__name__)


def pace(
    runtime: Runtime, job: Attempting, endpoint: Endpoint, addresses: list[str], paid: bool
) -> float | None:
    """Take JOB's rate-limit tokens (one round trip): None to send now, else seconds to wait.

    PAID: ENDPOINT's token was taken already (a bulk batch takes its tokens
    at once); only the recipient domains' buckets are asked, if any. When a
    bucket is empty the lease and the attempt number are given back: waiting
    is not an attempt. Raises redis.RedisError, or LeaseLost when the email was taken over.
    """
    domains = runtime.pacer.limited(addresses)
    granted, wait = runtime.pacer.take(None if paid else endpoint, job.priority, domains)
    if granted:
        return None
    runtime.store.give_back(job.email_id, job.number, job.fence)
    log_event(logger, "email.paced", id=job.email_id, provider=endpoint.name, wait=round(wait, 3))
    return wait


def divert(
    runtime: Runtime, job: Attempting, endpoint: Endpoint, error: DeliveryError
) -> tuple[str, float] | None:
    """(outcome, seconds to wait) when ERROR is the provider's, not the email's; else None.

    ``throttled``: "too much mail", every sender of ENDPOINT holds and slows
    down. ``failover``: ENDPOINT's circuit opened, the email goes to the next
    provider at once. The attempt is recorded (with the provider) and not counted.
    """
    if error.error_class == ErrorClass.THROTTLED:
        outcome, seconds = "throttled", runtime.pacer.throttle(endpoint)
    elif runtime.providers.failed(endpoint, error):
        outcome, seconds = "failover", 0.0
    else:
        return None
    entry = job.entry(outcome, error=str(error), smtp_code=error.code, error_class=error.error_class)
    # Spread, so the emails that met it together do not come back together.
    delay = seconds + random.random() * max(0.25, seconds / 10)
    next_at = iso(datetime.now(UTC) + timedelta(seconds=delay))
    persist(lambda: runtime.store.mark_paused(job.email_id, entry, next_at, job.fence))
    log_event(logger, f"email.{outcome}", logging.WARNING, id=job.email_id, attempt=job.number,
              provider=endpoint.name, error_class=error.error_class, retry_in=round(delay, 3))  # fmt: skip
    return outcome, delay


def too_much_mail_refusal(accepted: Accepted) -> TransientDeliveryError | None:
    """The THROTTLED error when the server refused every recipient with "too much mail", else None."""
    refusals = accepted.deferred
    if accepted.reply is not None or accepted.rejected or not refusals:
        return None
    if not all(too_much_mail(int(r["code"]), str(r["message"])) for r in refusals):
        return None
    code = int(refusals[0]["code"])
    return TransientDeliveryError(f"too much mail: {replies(refusals)}", code, ErrorClass.THROTTLED)
