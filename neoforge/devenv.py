"""What ``neoforge dev`` keeps between runs and hands to other shells.

- ``.env`` in the working directory is read (the shell's environment wins over it), as the API,
  the worker and ``docker compose`` read it.
- The API key and Flower's password are made once and kept in ``DATA_DIR/secrets.json`` (0600),
  so a restart keeps them; values set in the environment or ``.env`` win.
- ``DATA_DIR/env`` (0600) holds ``export`` lines for every setting another shell needs
  (``source .dev/env``) to use the running stack: the CLI, ``send_email.delay()``, curl.
- Ports are fixed, so bookmarks and ``.dev/env`` stay right; a taken one stops the start with
  one line naming the option or variable that moves it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

__all__ = ["DevSecrets", "PortTaken", "check_ports", "load_environment", "load_secrets", "write_env_file"]

FLOWER_USER = "admin"
# What another shell needs to reach the stack; the SMTP_* keys are added as they are set.
_EXPORTED = ("REDIS_URL", "API_KEYS", "FLOWER_BASIC_AUTH", "NEOFORGE_API_URL", "NEOFORGE_FLOWER_URL",
             "NEOFORGE_MAIL_VIEWER_URL")  # fmt: skip


class PortTaken(OSError):
    """Raised when a fixed development port is in use by another program."""


def load_environment(directory: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """ENVIRON over the values of DIRECTORY/.env (if any)."""
    values = {k: v for k, v in dotenv_values(directory / ".env").items() if v is not None}
    values.update(environ)
    return values


@dataclass(frozen=True)
class DevSecrets:
    api_key: str
    flower_password: str


def _write_private(path: Path, text: str) -> None:
    """Write TEXT to PATH readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an older file may have had wider rights


def load_secrets(data_dir: Path) -> DevSecrets:
    """The API key and Flower password of earlier runs, or new ones (then kept)."""
    path = data_dir / "secrets.json"
    try:
        stored = json.loads(path.read_text())
        kept = DevSecrets(str(stored["api_key"]), str(stored["flower_password"]))
    except (OSError, ValueError, KeyError, TypeError):
        kept = DevSecrets(secrets.token_urlsafe(24), secrets.token_urlsafe(16))
        _write_private(path, json.dumps({"api_key": kept.api_key, "flower_password": kept.flower_password}))
    return kept


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``export NAME=value`` lines for the settings another shell needs."""
    names = [n for n in _EXPORTED if n in env] + sorted(n for n in env if n.startswith("SMTP_"))
    lines = ["# Written by `neoforge dev` for other shells: source this file.\n"]
    lines += [f"export {name}={shlex.quote(env[name])}\n" for name in names]
    _write_private(path, "".join(lines))


def check_ports(ports: Mapping[str, tuple[int, str]]) -> None:
    """Raise PortTaken for the first of ``{what: (port, setting)}`` that another program holds."""
    for what, (port, setting) in ports.items():
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As servers bind: a port in TIME_WAIT after our last run is not taken.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise PortTaken(f"port {port} ({what}) is taken by another program; set {setting}") from None
