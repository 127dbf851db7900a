"""The mail viewer's HTTP server: a page, its assets and a small JSON API, on loopback.

Nothing is fetched from elsewhere: the page, its script and its style ship in ``static/``. A
message's HTML is served on its own URL with a Content-Security-Policy that allows no script and
no remote resource (images only as ``data:``), and the page shows it in an iframe sandboxed
without scripts or same-origin rights, so a caught email can neither run code nor call home.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from neoforge.mailviewer.mailbox import Mailbox, MessageNotFound

__all__ = ["MailViewer"]

logger = logging.getLogger(__name__)

_STATIC = Path(__file__).resolve().parent / "static"
_ASSETS = {
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-src 'self'; base-uri 'none'; form-action 'none'"
)
# For a caught email's HTML: inline styles (as email HTML uses them), images only inline.
MESSAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; sandbox"
_MESSAGE = re.compile(r"^/messages/(\d{6})/(raw|html)$")
_ATTACHMENT = re.compile(r"^/messages/(\d{6})/attachments/(\d{1,4})$")
_DETAIL = re.compile(r"^/api/messages/(\d{6})$")


def _disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact one (RFC 6266 / RFC 5987)."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename) or "attachment"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("viewer: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(data).encode(), "application/json")

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        mailbox = self.server.mailbox
        try:
            if path == "/":
                body = (_STATIC / "index.html").read_bytes()
                self._send(HTTPStatus.OK, body, "text/html; charset=utf-8", Content_Security_Policy=PAGE_CSP)
            elif path.startswith("/static/") and path[len("/static/") :] in _ASSETS:
                name = path[len("/static/") :]
                self._send(HTTPStatus.OK, (_STATIC / name).read_bytes(), _ASSETS[name])
            elif path == "/api/messages":
                self._json(mailbox.summaries())
            elif match := _DETAIL.match(path):
                self._json(mailbox.detail(match[1]))
            elif match := _MESSAGE.match(path):
                self._message(mailbox, match[1], match[2])
            elif match := _ATTACHMENT.match(path):
                filename, content_type, payload = mailbox.attachment(match[1], int(match[2]))
                self._send(
                    HTTPStatus.OK, payload, "application/octet-stream",
                    Content_Disposition=_disposition(filename), X_Original_Content_Type=content_type,
                )  # fmt: skip
            else:
                self._not_found()
        except MessageNotFound:
            self._not_found()

    def _message(self, mailbox: Mailbox, message_id: str, kind: str) -> None:
        if kind == "raw":
            # Shown as text whatever it holds, so a browser never renders it.
            self._send(HTTPStatus.OK, mailbox.raw(message_id), "text/plain; charset=utf-8")
            return
        html = mailbox.html(message_id)
        if html is None:
            self._not_found()
            return
        content_type = "text/html; charset=utf-8"
        self._send(HTTPStatus.OK, html.encode(), content_type, Content_Security_Policy=MESSAGE_CSP)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        super().__init__(address, _Handler)


class MailViewer:
    """The viewer for the mail in FOLDER, on http://127.0.0.1:PORT/ (a thread of this process)."""

    def __init__(self, folder: Path, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._server = _Server(("127.0.0.1", port), Mailbox(folder))
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="mail-viewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
