"""The SMTP host of the test bed (tests/hosts.py): ``python -m tests.hosts_smtp ADDRESS PORT LOG CONTROL``.

A RecordingHandler (tests/smtp_server.py) that appends one JSON line per accepted message to LOG
(``{"id", "at", "peer"}``: the email id from its Message-ID, arrival time, client address), and
reads CONTROL (JSON, written by the test) before each reply: ``data_delay`` seconds before each
250, and ``hold``, client addresses that get no reply at all to RCPT or DATA (``{"held", "at"}``
logged; the message never recorded) for as long as they are listed, then a 451.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.controller import Controller

from tests.smtp_server import RecordingHandler, email_id_of


class HostHandler(RecordingHandler):
    def __init__(self, log: TextIO, control: Path) -> None:
        super().__init__()
        self.log = log
        self.control = control

    def _write(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.log.write(json.dumps(event) + "\n")
            self.log.flush()

    def _settings(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.control.read_text()))
        except (OSError, ValueError):
            return {}

    async def _held(self, session: Any) -> bool:
        peer = session.peer[0]
        if peer not in self._settings().get("hold", []):
            return False
        self._write({"held": peer, "at": time.time()})
        while peer in self._settings().get("hold", []):
            await asyncio.sleep(0.1)
        return True

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if await self._held(session):
            return "451 4.3.0 held by the test"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if await self._held(session):
            return "451 4.3.0 held by the test"
        self.data_delay = float(self._settings().get("data_delay", 0.0))
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            received = self.messages[-1]
            self._write({"id": email_id_of(received.message), "at": received.at, "peer": session.peer[0]})
        return reply


def main(address: str, port: str, log_path: str, control: str) -> None:
    with open(log_path, "a") as log:
        handler = HostHandler(log, Path(control))
        controller = Controller(handler, hostname=address, port=int(port))
        controller.start()
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        log.flush()  # the file exists: the server is up
        stopped.wait()
        controller.stop()


if __name__ == "__main__":
    main(*sys.argv[1:5])
