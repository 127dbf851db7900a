"""EmailService: the older design's call shapes, as a thin wrapper over ``send_email``."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi_mail import MessageSchema, MessageType
from starlette.datastructures import UploadFile

from neoforge.bulk import queue_bulk
from neoforge.enqueue import validate
from neoforge.errors import FieldError, InvalidEmail
from tasks import send_email

__all__ = ["EmailService"]


async def _attachments(message: MessageSchema) -> list[dict[str, str]]:
    files = []
    # MessageSchema's validator has already turned each attachment into (UploadFile, meta).
    for item in message.attachments:
        upload, meta = item if isinstance(item, tuple) else (item, None)
        if not isinstance(upload, UploadFile):
            raise InvalidEmail([FieldError(("attachments",), "must be files, not paths")])
        await upload.seek(0)
        content = await upload.read()
        if meta and "mime_type" in meta and "mime_subtype" in meta:
            content_type = f"{meta['mime_type']}/{meta['mime_subtype']}"
        else:
            content_type = upload.headers.get("content-type") or "application/octet-stream"
        files.append(
            {
                "filename": upload.filename or "attachment",
                "content": base64.b64encode(content).decode(),
                "content_type": content_type.split(";")[0].strip(),
            }
        )
    return files


class EmailService:
    """Queue emails from async app code; every method returns the email id at once."""

    def __init__(self, *, queue: str | None = None) -> None:
        self.queue = queue

    async def send(self, **fields: Any) -> str:
        """Queue an email given ``send_email``'s keyword arguments."""
        options = {"queue": self.queue} if self.queue else {}

        def enqueue() -> str:
            email_id, _ = send_email.enqueue(validate(fields), checked=True, **options)
            return str(email_id)

        # Publishing talks to Redis synchronously: keep it off the event loop.
        return await asyncio.to_thread(enqueue)

    async def send_many(self, emails: list[dict[str, Any]]) -> list[str]:
        """Queue many different emails (each as ``send``'s keyword arguments); their ids, in order."""
        return await asyncio.to_thread(send_email.send_many, emails, queue=self.queue)

    async def send_bulk(
        self, template: str, subject: str, recipients: list[dict[str, Any]], **shared: Any
    ) -> tuple[str, list[str]]:
        """Queue TEMPLATE to RECIPIENTS (``[{"to": ..., "context": {...}}]``); return (batch, email ids)."""
        fields = {"template": template, "subject": subject, "recipients": recipients, **shared}
        return await asyncio.to_thread(queue_bulk, fields)

    async def send_queued_email(self, message: MessageSchema, template_name: str | None = None) -> str:
        """Queue a fastapi-mail MessageSchema: ``template_name`` + ``template_body``, or a body."""
        fields: dict[str, Any] = {
            "to": [r.email for r in message.recipients],
            "cc": [r.email for r in message.cc],
            "bcc": [r.email for r in message.bcc],
            "reply_to": [r.email for r in message.reply_to],
            "subject": message.subject,
            "headers": dict(message.headers or {}),
            "attachments": await _attachments(message),
        }
        if template_name:
            fields["template"] = template_name.removesuffix(".html").removesuffix(".txt")
            fields["context"] = dict(message.template_body or {})  # type: ignore[arg-type]
        elif message.subtype == MessageType.html:
            fields["html"] = message.body
            if message.alternative_body is not None:
                fields["text"] = message.alternative_body
        else:
            fields["text"] = message.body
            if message.alternative_body is not None:
                fields["html"] = message.alternative_body
        return await self.send(**fields)

    async def send_test_email(
        self,
        email_to: str,
        subject: str = "Test email",
        template_name: str = "test_email",
        template_data: dict[str, Any] | None = None,
    ) -> str:
        """Queue a test email (by default templates/test_email)."""
        data = {"name": email_to.split("@")[0], **(template_data or {})}
        return await self.send(to=[email_to], subject=subject, template=template_name, context=data)

    async def send_reset_password_email(
        self, email_to: str, username: str, link: str, valid_hours: int = 1
    ) -> str:
        """Queue a password-reset email with its one-time link."""
        return await self.send(
            to=[email_to],
            subject="Reset your password",
            template="reset_password",
            context={"username": username, "link": link, "valid_hours": valid_hours},
        )

    async def send_new_account_email(self, email_to: str, username: str, link: str) -> str:
        """Queue a welcome email for a new account (never a password)."""
        return await self.send(
            to=[email_to],
            subject=f"Welcome, {username}",
            template="new_account",
            context={"username": username, "link": link},
        )

    async def send_admin_alert_email(
        self, email_to: str | list[str], alert: str, details: dict[str, Any] | None = None
    ) -> str:
        """Queue an alert to the administrators."""
        recipients = [email_to] if isinstance(email_to, str) else list(email_to)
        return await self.send(
            to=recipients,
            subject=f"[alert] {alert}",
            template="admin_alert",
            context={"alert": alert, "details": details or {}},
        )
