"""Postfix's ``smtp-sink``: installed on demand, started on a free port, deliveries counted.

Each accepted message is dumped to its own file (``-d``), so the number of
files in the dump folder is the number of messages the sink took.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from neoforge.processes import free_port, start, stop, wait_until

__all__ = ["SmtpSink", "ensure_smtp_sink", "greets"]

_SMTP_SINK = "/usr/sbin/smtp-sink"
_POLICY = Path("/usr/sbin/policy-rc.d")


def ensure_smtp_sink() -> str:
    """The path of ``smtp-sink``, installing Debian's ``postfix`` (no daemon started) if missing."""
    found = shutil.which("smtp-sink") or (_SMTP_SINK if os.access(_SMTP_SINK, os.X_OK) else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("smtp-sink is missing and installing postfix needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
        env=env,
    )
    # Package scripts must not start the postfix daemon: policy-rc.d answers
    # 101 ("action forbidden") while we install, unless one is already there.
    created = not _POLICY.exists()
    if created:
        _POLICY.write_text("#!/bin/sh\nexit 101\n")
        _POLICY.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postfix"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if created:
            _POLICY.unlink(missing_ok=True)
    found = shutil.which("smtp-sink") or _SMTP_SINK
    if not os.access(found, os.X_OK):
        raise RuntimeError("postfix installed but smtp-sink not found")
    return found


def greets(port: int) -> bool:
    """True when an SMTP server on 127.0.0.1:PORT sends its 220 greeting."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.settimeout(2)
        return sock.recv(64).startswith(b"220")


def _unprivileged_user() -> str:
    # smtp-sink refuses to run as root without -u; postfix's package creates "postfix".
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "nobody"
    return "postfix"


class SmtpSink:
    """One ``smtp-sink`` on 127.0.0.1 and a free port, counting the messages it accepted.

    ``-c`` makes it print ``sess=N quit=N mesg=N`` followed by a carriage return
    every time a message ends ("." received); the last ``mesg`` on its output is
    the count. Nothing is written to disk but that line.
    """

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.log = folder / f"smtp-sink-{self.port}.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "-c", "-u", _unprivileged_user(), f"127.0.0.1:{self.port}", "1024"]
        if os.geteuid() != 0:
            command[2:4] = []
        self.process = start(command, log=self.log)
        wait_until(lambda: greets(self.port), 10, "smtp-sink")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("smtp-sink is not running")
        return self.process.pid

    def count(self) -> int:
        """Messages accepted so far."""
        with open(self.log, "rb") as out:
            out.seek(0, os.SEEK_END)
            out.seek(max(0, out.tell() - 256))
            tail = out.read().decode("ascii", "replace")
        # Each record ends with "\r"; the text after the last one may be half written.
        for record in reversed(tail.split("\r")[:-1]):
            value = record.rpartition("mesg=")[2].strip()
            if value.isdigit():
                return int(value)
        return 0

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=5)
            self.process = None
