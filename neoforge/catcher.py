"""A development mail catcher: an SMTP server that keeps every message in a folder.

Each message is ``NNNNNN.eml`` (the bytes as received) beside ``NNNNNN.json`` (the envelope and
the time it arrived), written so that a reader (the mail viewer) never sees half a message.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

from neoforge.logs import log_event
from neoforge.processes import DevExtraMissing
from neoforge.redact import mask_address

__all__ = ["MailCatcher"]

logger = logging.getLogger(__name__)


class _SaveHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        numbers = [int(p.stem) for p in folder.glob("*.eml") if p.stem.isdigit()]
        self.counter = itertools.count(max(numbers, default=0) + 1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        number = next(self.counter)
        path = self.folder / f"{number:06d}.eml"
        content = envelope.original_content or envelope.content
        meta = {
            "mail_from": envelope.mail_from or "",
            "rcpt_tos": list(envelope.rcpt_tos),
            "received": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path.with_suffix(".json").write_text(json.dumps(meta))
        partial = path.with_suffix(".part")
        partial.write_bytes(content)
        os.replace(partial, path)
        parsed = message_from_bytes(content, policy=default)
        log_event(
            logger,
            "catcher.received",
            file=path.name,
            mail_from=mask_address(envelope.mail_from or ""),
            to=",".join(mask_address(a) for a in envelope.rcpt_tos),
            subject=str(parsed.get("Subject", "")),
        )
        return "250 Message accepted for delivery"


class MailCatcher:
    """aiosmtpd on 127.0.0.1:PORT, saving each message as NNNNNN.eml in FOLDER."""

    def __init__(self, folder: Path, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = port
        try:
            from aiosmtpd.controller import Controller  # dev-only: absent from production installs
        except ImportError as exc:
            raise DevExtraMissing(
                "the mail catcher needs the dev extra: pip install 'neoforge-mail[dev]'"
            ) from exc
        self.controller = Controller(_SaveHandler(folder), hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
