"""The baseline: the typical Celery email task, written as fastapi-mail's documentation shows it.

``celery -A bench.baseline worker``: Celery's default worker command (prefork,
one pool process per CPU). ``ConnectionConfig`` is built once, when the module
is imported, as fastapi-mail's documentation does; each email is sent with
``asyncio.run(FastMail(conf).send_message(message))``: a new event loop and a
new SMTP connection for every email. The task takes the whole email as
arguments (so the broker message carries it). Results are ignored, as such
tasks usually do.

Environment: ``BASELINE_BROKER_URL``, ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_FROM``,
read at import (the SMTP settings) and when Celery first needs its configuration.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celery import Celery
from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType, MultipartSubtypeEnum
from fastapi_mail.errors import ConnectionErrors

__all__ = ["app", "conf", "send_email"]

app = Celery("baseline")


def _config() -> dict[str, Any]:
    return {
        "broker_url": os.environ.get("BASELINE_BROKER_URL", "redis://127.0.0.1:6379/1"),
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


app.add_defaults(_config)  # called when Celery first reads its configuration, not now

# As in fastapi-mail's documentation: one configuration object, at import.
conf = ConnectionConfig(
    MAIL_USERNAME="",
    MAIL_PASSWORD="",
    MAIL_FROM=os.environ.get("SMTP_FROM", "noreply@example.com"),
    MAIL_FROM_NAME="Example Shop",
    MAIL_SERVER=os.environ.get("SMTP_HOST", "localhost"),
    MAIL_PORT=int(os.environ.get("SMTP_PORT", "25")),
    MAIL_STARTTLS=False,
    MAIL_SSL_TLS=False,
    USE_CREDENTIALS=False,
)


@app.task(
    name="baseline.send_email",
    autoretry_for=(ConnectionErrors,),
    retry_backoff=True,
    max_retries=5,
)
def send_email(to: list[str], subject: str, text: str, html: str) -> None:
    """Send one email over a new SMTP connection."""
    # The same MIME shape as NeoForge Mail builds: text, then HTML as the preferred alternative.
    message = MessageSchema(
        recipients=to,
        subject=subject,
        body=text,
        alternative_body=html,
        subtype=MessageType.plain,
        multipart_subtype=MultipartSubtypeEnum.alternative,
    )
    asyncio.run(FastMail(conf).send_message(message))
