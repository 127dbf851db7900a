"""``neoforge flower``: Flower for the ``tasks`` Celery app, never open without credentials.

Flower reads ``FLOWER_BASIC_AUTH`` (``user:password[,user:password...]``) from the environment
itself (flower/command.py, ``apply_env_options``), so the credentials stay off the command line,
where ``ps`` would show them. This module only checks them and then replaces the process with
``celery -A tasks flower``. ``FLOWER_PORT`` (5555) and ``FLOWER_ADDRESS`` (all interfaces) are
left to Flower, except that ``--local-only`` forces 127.0.0.1 and allows running without auth.
"""

from __future__ import annotations

import os
import sys

import click

__all__ = ["MIN_PASSWORD_LENGTH", "credentials_problem", "run"]

MIN_PASSWORD_LENGTH = 12
_VARIABLE = "FLOWER_BASIC_AUTH"
_FORMAT = "user:password[,user:password...]"
_LOCAL_ADDRESS = "127.0.0.1"


def credentials_problem(value: str) -> str | None:
    """What is wrong with a ``FLOWER_BASIC_AUTH`` value, or None if it is usable."""
    for number, pair in enumerate(value.split(","), start=1):
        # Flower compares "user:password" verbatim, so a stray space would lock the user out.
        if pair != pair.strip():
            return f"pair {number} has spaces around it"
        user, colon, password = pair.partition(":")
        if not colon or not user:
            return f"pair {number} is not user:password"
        if len(password) < MIN_PASSWORD_LENGTH:
            return f"pair {number} has a password shorter than {MIN_PASSWORD_LENGTH} characters"
    return None


def _say(message: str) -> None:
    click.echo(f"neoforge flower: {message}", err=True)


def _refuse(message: str) -> int:
    _say(message)
    return 2


def run(local_only: bool, extra_args: list[str]) -> int:
    """Exec ``celery -A tasks flower`` with EXTRA_ARGS; return 2 if the credentials are missing or bad."""
    for arg in extra_args:
        if arg.lstrip("-").partition("=")[0].replace("-", "_") == "basic_auth":
            return _refuse(f"credentials on the command line are visible to every user; set {_VARIABLE}")

    value = os.environ.get(_VARIABLE, "")
    args = list(extra_args)
    if value:
        problem = credentials_problem(value)
        if problem:
            # Never echo the value: it holds passwords.
            return _refuse(f"{_VARIABLE} is invalid: {problem}; expected {_FORMAT}")
    elif not local_only:
        return _refuse(
            f"{_VARIABLE} is not set; set it to {_FORMAT} (passwords of {MIN_PASSWORD_LENGTH}+ "
            "characters), or pass --local-only to run without auth on 127.0.0.1"
        )
    else:
        # An empty value would make Flower demand credentials that match nothing.
        os.environ.pop(_VARIABLE, None)

    if local_only:
        # Last on the command line, so it wins over any --address and over FLOWER_ADDRESS.
        args.append(f"--address={_LOCAL_ADDRESS}")
        auth = "with" if value else "WITHOUT"
        _say(f"--local-only: listening on {_LOCAL_ADDRESS} only, {auth} auth")

    sys.stdout.flush()
    sys.stderr.flush()
    command = [sys.executable, "-m", "celery", "-A", "tasks", "flower", *args]
    # exec, not a child: Flower gets our PID and the signals sent to it (SIGTERM from compose).
    os.execvp(command[0], command)  # noqa: S606 - fixed argv, no shell
