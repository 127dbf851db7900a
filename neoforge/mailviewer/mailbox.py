"""The caught mail on disk, read for the viewer: a summary per message, one message's parts, defects.

The catcher writes ``NNNNNN.eml`` (the bytes as received) and ``NNNNNN.json`` (the SMTP envelope
and the time it arrived). Messages are parsed with ``email.policy.default``, whose parser records
what is wrong with a message as defects instead of failing; the viewer shows them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import default
from pathlib import Path
from typing import Any

__all__ = ["Mailbox", "MessageNotFound"]

_ID = re.compile(r"^\d{6}$")


class MessageNotFound(LookupError):
    """Raised when no caught message has the given id."""


@dataclass(frozen=True)
class _Part:
    content_type: str
    filename: str | None
    payload: bytes


def _defects(message: Message) -> list[str]:
    """Each parse defect of MESSAGE, its parts and its headers, as 'Class: description'."""
    found: list[str] = []
    for part in message.walk():
        where = part.get_content_type()
        for defect in part.defects:
            found.append(f"{type(defect).__name__} ({where}): {defect}")
        for name, value in part.items():
            for defect in getattr(value, "defects", ()):
                found.append(f"{type(defect).__name__} (header {name}): {defect}")
    return found


def _decoded(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _text(part: Message) -> str:
    charset = part.get_content_charset() or "utf-8"
    try:
        return _decoded(part).decode(charset, errors="replace")
    except LookupError:  # an unknown charset name
        return _decoded(part).decode("utf-8", errors="replace")


def _attachments(message: Message) -> list[_Part]:
    """Every leaf part that is not the message's text or HTML body, in order."""
    bodies = set()
    if isinstance(message, EmailMessage):
        for preference in (("plain",), ("html",)):
            body = message.get_body(preferencelist=preference)
            if body is not None:
                bodies.add(id(body))
    found = []
    for part in message.walk():
        if part.is_multipart() or id(part) in bodies:
            continue
        found.append(_Part(part.get_content_type(), part.get_filename(), _decoded(part)))
    return found


class Mailbox:
    """The messages in FOLDER, newest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # Each message parsed once for the list, which the page polls every second.
        self._rows: dict[str, tuple[int, dict[str, Any]]] = {}

    def _path(self, message_id: str) -> Path:
        path = self.folder / f"{message_id}.eml"
        if not _ID.match(message_id) or not path.is_file():
            raise MessageNotFound(message_id)
        return path

    def raw(self, message_id: str) -> bytes:
        """The message's bytes exactly as the catcher received them."""
        return self._path(message_id).read_bytes()

    def _parse(self, message_id: str) -> EmailMessage:
        parsed = message_from_bytes(self.raw(message_id), policy=default)
        if not isinstance(parsed, EmailMessage):  # policy.default always makes one
            raise MessageNotFound(message_id)
        return parsed

    def _envelope(self, message_id: str) -> dict[str, Any]:
        try:
            data = json.loads((self.folder / f"{message_id}.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def summaries(self) -> list[dict[str, Any]]:
        """One row per message, newest first: sender, recipients, subject, time, counts."""
        rows = []
        for path in sorted(self.folder.glob("*.eml"), reverse=True):
            message_id = path.stem
            if not _ID.match(message_id):
                continue
            try:
                size = path.stat().st_size
                cached = self._rows.get(message_id)
                if cached is not None and cached[0] == size:
                    rows.append(cached[1])
                    continue
                message = self._parse(message_id)
            except (OSError, MessageNotFound):  # deleted while we looked
                continue
            envelope = self._envelope(message_id)
            row = {
                "id": message_id,
                "from": str(message.get("From", "")) or envelope.get("mail_from", ""),
                "to": envelope.get("rcpt_tos") or [str(message.get("To", ""))],
                "subject": str(message.get("Subject", "")),
                "received": envelope.get("received", ""),
                "size": size,
                "attachments": len(_attachments(message)),
                "defects": len(_defects(message)),
            }
            self._rows[message_id] = (size, row)
            rows.append(row)
        return rows

    def detail(self, message_id: str) -> dict[str, Any]:
        """One message: its headers, text body, whether it has HTML, attachments and defects."""
        message = self._parse(message_id)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        envelope = self._envelope(message_id)
        return {
            "id": message_id,
            "envelope": envelope,
            "subject": str(message.get("Subject", "")),
            "headers": [[name, str(value)] for name, value in message.items()],
            "text": _text(text) if text is not None else None,
            "has_html": html is not None,
            "attachments": [
                {"index": n, "filename": p.filename, "content_type": p.content_type, "size": len(p.payload)}
                for n, p in enumerate(_attachments(message))
            ],
            "defects": _defects(message),
        }

    def html(self, message_id: str) -> str | None:
        """The message's HTML body, or None if it has none."""
        html = self._parse(message_id).get_body(preferencelist=("html",))
        return _text(html) if html is not None else None

    def attachment(self, message_id: str, index: int) -> tuple[str, str, bytes]:
        """Attachment INDEX of a message: (filename, content type, decoded bytes)."""
        parts = _attachments(self._parse(message_id))
        if not 0 <= index < len(parts):
            raise MessageNotFound(f"{message_id}/{index}")
        part = parts[index]
        return part.filename or f"attachment-{index}", part.content_type, part.payload
