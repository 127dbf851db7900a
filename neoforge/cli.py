"""The ``neoforge`` command: run the development system, queue an email, read a status, check SMTP."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
import redis

from neoforge.cli_policy import suppression, webhooks
from neoforge.console import hash_password
from neoforge.deadletters import list_failed, requeue_all
from neoforge.deadletters import requeue as requeue_one
from neoforge.devstack import DevStack
from neoforge.errors import ConfigurationError, EmailNotFound, InvalidEmail, QueueUnavailable
from neoforge.flower import run
from neoforge.logs import configure_logging
from neoforge.redis_client import unavailable
from neoforge.runtime import current
from neoforge.schemas import email_status
from neoforge.serve import uvicorn_command
from neoforge.settings import Settings, get_settings
from neoforge.smtp.probe import check_smtp_blocking
from tasks import send_email

__all__ = ["main"]


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """NeoForge Mail: background email delivery on Celery and Redis."""


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".dev"),
    show_default=True,
    help="Where Redis data, caught mail and logs are kept.",
)
@click.option(
    "--api-port",
    default=8000,
    show_default=True,
    envvar="NEOFORGE_DEV_API_PORT",
    help="API port (0: any free one).",
)
@click.option(
    "--flower-port", default=5555, show_default=True, envvar="NEOFORGE_DEV_FLOWER_PORT", help="Flower port."
)
@click.option(
    "--smtp-port",
    default=1025,
    show_default=True,
    envvar="NEOFORGE_DEV_SMTP_PORT",
    help="Mail catcher SMTP port.",
)
@click.option(
    "--viewer-port",
    default=8025,
    show_default=True,
    envvar="NEOFORGE_DEV_VIEWER_PORT",
    help="Mail viewer (browser) port.",
)
@click.option(
    "--redis-port",
    default=6380,
    show_default=True,
    envvar="NEOFORGE_DEV_REDIS_PORT",
    help="Embedded Redis port.",
)
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
def dev(
    data_dir: Path, api_port: int, flower_port: int, smtp_port: int, viewer_port: int, redis_port: int,
    concurrency: int,
) -> None:  # fmt: skip
    """Run Redis, a mail catcher and viewer, a worker, Flower and the API until Ctrl-C."""

    configure_logging("INFO", "text")
    # aiosmtpd narrates every connection at INFO; the catcher logs each message itself.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stack = DevStack(
        data_dir.resolve(), api_port, flower_port, smtp_port, redis_port, viewer_port, concurrency
    )
    sys.exit(stack.run())


@main.command()
@click.option("--to", "to", multiple=True, required=True, help="Recipient (repeat for more).")
@click.option("--cc", multiple=True, help="Copy recipient (repeatable).")
@click.option("--bcc", multiple=True, help="Blind-copy recipient (repeatable).")
@click.option("--subject", required=True)
@click.option("--template", help="Template name in templates/.")
@click.option("--context", "context_json", help="Template variables as a JSON object.")
@click.option("--text", help="Plain-text body.")
@click.option("--html", help="HTML body.")
@click.option(
    "--priority", type=click.Choice(["transactional", "bulk"]), default="transactional", show_default=True
)
@click.option("--idempotency-key", help="Queue at most once per key within the idempotency window.")
def send(
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    subject: str,
    template: str | None,
    context_json: str | None,
    text: str | None,
    html: str | None,
    priority: str,
    idempotency_key: str | None,
) -> None:
    """Queue an email and print its id."""
    _settings()
    fields: dict[str, Any] = {
        "to": list(to), "cc": list(cc), "bcc": list(bcc), "subject": subject, "priority": priority,
    }  # fmt: skip
    if idempotency_key:
        fields["idempotency_key"] = idempotency_key
    if template:
        fields["template"] = template
        try:
            fields["context"] = json.loads(context_json or "{}")
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--context") from None
    if text is not None:
        fields["text"] = text
    if html is not None:
        fields["html"] = html
    try:
        result = send_email.apply_async(kwargs=fields)
    except InvalidEmail as exc:
        raise click.ClickException(f"invalid email: {exc}") from None
    except QueueUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.id)


@main.command()
@click.argument("email_id")
def status(email_id: str) -> None:
    """Print an email's status record as JSON."""
    _settings()
    try:
        record = current().store.get(email_id)
    except redis.RedisError as exc:
        raise click.ClickException(str(unavailable(exc))) from None
    if record is None:
        raise click.ClickException(f"no email with id {email_id}")
    # Exactly what GET /emails/{id} answers (FastAPI serialises the same model the same way).
    click.echo(json.dumps(email_status(record).model_dump(mode="json", by_alias=True), indent=2))


@main.command()
@click.option("--limit", default=50, show_default=True)
def failed(limit: int) -> None:
    """List failed emails (dead letters), newest first: id, time, error class, last error."""
    _settings()
    try:
        records, _ = list_failed(limit)
    except redis.RedisError as exc:
        raise click.ClickException(str(unavailable(exc))) from None
    for record in records:
        click.echo(
            f"{record['id']}  {record.get('failed_at', '')}  {record.get('error_class', '')}  "
            f"{record.get('last_error', '')}"
        )
    click.echo(f"{len(records)} failed email(s) shown", err=True)


@main.command()
@click.argument("email_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Requeue every failed email.")
@click.option("--error-class", help="With --all: only this error class (e.g. smtp_4xx).")
def requeue(email_id: str | None, all_: bool, error_class: str | None) -> None:
    """Send failed emails again under the same id: one ID, or --all."""
    _settings()
    if bool(email_id) == all_:
        raise click.UsageError("give one email id, or --all")
    try:
        if all_:
            click.echo(f"requeued {requeue_all(error_class)} email(s)")
            return
        if email_id and not requeue_one(email_id):
            raise click.ClickException(f"email {email_id} is not failed")
    except EmailNotFound:
        raise click.ClickException(f"no email with id {email_id}") from None
    except (redis.RedisError, QueueUnavailable) as exc:
        raise click.ClickException(
            str(exc if isinstance(exc, QueueUnavailable) else unavailable(exc))
        ) from None
    click.echo(f"requeued {email_id}")


@main.command()
def check() -> None:
    """Log in to the SMTP server as configured, then QUIT; print one line, exit 1 if it failed."""
    result = check_smtp_blocking(_settings())
    click.echo(result.line)
    sys.exit(0 if result.ok else 1)


@main.command("console-hash-password")
@click.option("--user", help="Print a whole CONSOLE_USERS entry for this name.")
@click.option("--role", type=click.Choice(["viewer", "operator"]), default="operator", show_default=True)
@click.password_option(help="The password (asked for when not given; prefer the prompt).")
def console_hash_password(user: str | None, role: str, password: str) -> None:
    """Hash a console password for CONSOLE_USERS (scrypt, salted)."""
    if len(password) < 12:
        raise click.ClickException("a console password needs at least 12 characters")
    hashed = hash_password(password)
    click.echo(f"{user}:{role}:{hashed}" if user else hashed)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--local-only", is_flag=True, help="Allow running without credentials, bound to 127.0.0.1.")
@click.pass_context
def flower(ctx: click.Context, local_only: bool) -> None:
    """Run Flower for this app; refuses to start without FLOWER_BASIC_AUTH unless --local-only."""

    sys.exit(run(local_only=local_only, extra_args=list(ctx.args)))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve the API with uvicorn, one process per core; other options are uvicorn's (--host, --port, ...)."""
    command = uvicorn_command(ctx.args, _settings().embedded_worker)
    os.execv(command[0], command)  # noqa: S606 (uvicorn takes this process: signals reach it directly)


main.add_command(suppression)
main.add_command(webhooks)

if __name__ == "__main__":
    main()
