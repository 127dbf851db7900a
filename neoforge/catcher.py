"""A development mail catcher: an SMTP server that keeps every message in a folder."""

from __future__ import annotations

import itertools
import logging
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from neoforge.logs import log_event
from neoforge.redact import mask_address

__all__ = ["MailCatcher"]

logger = logging.getLogger(__name__)


class _SaveHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        start = len(list(folder.glob("*.eml")))
        self.counter = itertools.count(start + 1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        number = next(self.counter)
        path = self.folder / f"{number:06d}.eml"
        path.write_bytes(envelope.original_content or envelope.content)
        parsed = message_from_bytes(envelope.original_content or envelope.content, policy=default)
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
        self.controller = Controller(_SaveHandler(folder), hostname="127.0.0.1", port=port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
