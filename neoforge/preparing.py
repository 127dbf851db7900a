"""Building one attempt's message: who it goes to this time, and the bytes to send them.

Recipients on the suppression list are taken out first (no message is built when none is
left); then the one-click unsubscribe headers, the template, the MIME message, and the DKIM
signature when configured.
"""

from __future__ import annotations

import jinja2
from pydantic import ValidationError

from neoforge.dkim import sign
from neoforge.errors import ErrorClass, PermanentDeliveryError
from neoforge.message import EmailRequest
from neoforge.mime import build
from neoforge.recipients import Envelope, plan
from neoforge.runtime import Runtime
from neoforge.staging import envelope
from neoforge.suppression import find, list_id
from neoforge.templates import Rendered, render
from neoforge.unsubscribe import headers as unsubscribe_headers

__all__ = ["prepare"]


def prepare(
    runtime: Runtime, email_id: str, payload: str, todo: str, outcomes: str
) -> tuple[bytes, Envelope]:
    """The MIME message's bytes, and who it goes to this time (TODO: those left by a partial delivery).

    Recipients on the suppression list are taken out (one pipelined Redis
    round trip); with none left, no message is built. Built in the calling
    thread, not on the sender loop: the loop carries every dialogue of the
    process and must not wait for CPU work.
    """
    settings = runtime.settings
    try:
        request = EmailRequest.model_validate_json(payload, context={"stored": True})
        recipients, held = envelope(request.recipients(), settings)
        if not recipients:
            text = "no recipient in EMAIL_ALLOWED_DOMAINS"
            raise PermanentDeliveryError(text, None, ErrorClass.NOT_ALLOWED)
        planned = plan(recipients, held, todo, outcomes)
        planned.suppress(find(runtime.redis, planned.addresses, list_id(request.headers)))
        if not planned.targets:
            return b"", planned
        added = unsubscribe_headers(email_id, request, settings)
        if added:
            request = request.model_copy(update={"headers": {**request.headers, **added}})
        body = render(request.template, request.context) if request.template is not None else Rendered(
            html=request.html, text=request.text)  # fmt: skip
        data = build(email_id, request, body, settings).as_bytes()
        if runtime.dkim_key is not None and settings.dkim_domain and settings.dkim_selector:
            data = sign(data, settings.dkim_domain, settings.dkim_selector, runtime.dkim_key)
    except (ValidationError, jinja2.TemplateError, ValueError, TypeError, LookupError) as exc:
        raise PermanentDeliveryError(
            f"message cannot be built: {type(exc).__name__}", None, ErrorClass.INVALID
        ) from exc
    if len(data) > settings.email_max_message_bytes:
        limit = settings.email_max_message_bytes
        text = f"message of {len(data)} bytes is larger than EMAIL_MAX_MESSAGE_BYTES ({limit})"
        raise PermanentDeliveryError(text, None, ErrorClass.SIZE)
    return data, planned
