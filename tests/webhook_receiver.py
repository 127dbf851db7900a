"""A webhook receiver for the tests, run as its own process: records every POST, can fail on purpose.

    python tests/webhook_receiver.py PORT LOG [FAIL_FIRST]

Each request is appended to LOG as one JSON line (path, headers, body); the
first FAIL_FIRST requests are answered 500, the rest 204.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_seen = 0


def main() -> None:
    port, log, fail_first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            global _seen
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with _lock:
                _seen += 1
                failing = _seen <= fail_first
                with open(log, "a") as out:
                    entry = {"path": self.path, "headers": dict(self.headers), "body": body.decode(),
                             "answered": 500 if failing else 204}  # fmt: skip
                    out.write(json.dumps(entry) + "\n")
            self.send_response(500 if failing else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
