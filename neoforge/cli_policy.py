"""``neoforge suppression ...`` and ``neoforge webhooks ...``: the sending policy from the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import redis
from kombu.exceptions import OperationalError

from neoforge.addresses import check_mailbox
from neoforge.errors import ConfigurationError
from neoforge.events import failed
from neoforge.redis_client import unavailable
from neoforge.runtime import current
from neoforge.settings import get_settings
from neoforge.suppression import Entry, add, check, entries, remove
from tasks.webhooks import requeue_failed_webhooks

__all__ = ["suppression", "webhooks"]

T = TypeVar("T")


def _redis(call: Callable[[redis.Redis], T]) -> T:
    try:
        get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return call(current().redis)
    except (redis.RedisError, OperationalError) as exc:
        raise click.ClickException(str(unavailable(redis.ConnectionError(str(exc))))) from None


def _address(value: str) -> str:
    try:
        return check_mailbox(value, get_settings().email_allow_special_domains, display_name=False).address
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ADDRESS") from None


def _line(entry: Entry) -> str:
    until = datetime.fromtimestamp(entry.until, UTC).isoformat() if entry.until else "never"
    scope = "all lists" if entry.scope == "*" else f"list {entry.scope}"
    added = datetime.fromtimestamp(entry.added_at, UTC).isoformat()
    return f"{entry.address}  {scope}  {entry.reason}  added {added}  expires {until}"


@click.group()
def suppression() -> None:
    """The suppression list: addresses never sent to (hard bounces, unsubscribes, added by hand)."""


@suppression.command("check")
@click.argument("address")
def check_cmd(address: str) -> None:
    """Say whether ADDRESS is suppressed (exit 1 if it is not)."""
    found = _redis(lambda client: check(client, _address(address)))
    for entry in found:
        click.echo(_line(entry))
    if not found:
        click.echo("not suppressed")
        raise SystemExit(1)


@suppression.command("add")
@click.argument("address")
@click.option("--list-id", help="Only this list's bulk mail (List-Id); default: every email.")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), help="Expire after this many days.")
def add_cmd(address: str, list_id: str | None, days: float | None) -> None:
    """Suppress ADDRESS."""
    checked = _address(address)
    entry = _redis(lambda client: add(client, checked, list_name=list_id, ttl=days * 86400 if days else None))
    click.echo(f"suppressed {_line(entry)}")


@suppression.command("remove")
@click.argument("address")
@click.option("--list-id", help="Only this list's entry; default: every entry.")
def remove_cmd(address: str, list_id: str | None) -> None:
    """Lift ADDRESS's suppression."""
    checked = _address(address)
    click.echo(f"removed {_redis(lambda client: remove(client, checked, list_id))} entry(ies)")


@suppression.command("list")
@click.option("--limit", default=100, show_default=True)
def list_cmd(limit: int) -> None:
    """List suppressed addresses (masked), newest first."""
    found = _redis(lambda client: entries(client, limit))
    for entry in found:
        click.echo(_line(entry))
    click.echo(f"{len(found)} entry(ies) shown", err=True)


@click.group()
def webhooks() -> None:
    """Delivery events sent to EMAIL_WEBHOOK_URL: dead letters and requeue."""


@webhooks.command("failed")
@click.option("--limit", default=50, show_default=True)
def failed_cmd(limit: int) -> None:
    """List webhook deliveries that gave up, newest first (JSON lines)."""
    found: list[dict[str, Any]] = _redis(lambda client: failed(client, limit))
    for item in found:
        click.echo(json.dumps(item, sort_keys=True))
    click.echo(f"{len(found)} failed delivery(ies) shown", err=True)


@webhooks.command("requeue")
def requeue_cmd() -> None:
    """Queue every failed webhook delivery again."""
    click.echo(f"requeued {_redis(lambda _: requeue_failed_webhooks())} delivery(ies)")
