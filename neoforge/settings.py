"""All configuration, read from the environment (and ``.env``) by one cached ``get_settings()``."""

from __future__ import annotations

import re
import ssl
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from neoforge.addresses import check_domain_suffix, check_mailbox
from neoforge.dkim import check_key
from neoforge.endpoints import Endpoint, parse_urls
from neoforge.errors import ConfigurationError, plain_message
from neoforge.rates import Rate, parse_domain_limits, parse_rate
from neoforge.settings_liveness import LivenessSettings

__all__ = ["Settings", "get_settings"]

# name:role:scrypt$n$r$p$salt$hash (neoforge/console/passwords.py writes the hash).
_CONSOLE_USER = re.compile(
    r"[A-Za-z0-9._-]{1,64}:(viewer|operator):scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+"
)
_DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class Settings(LivenessSettings, BaseSettings):
    """Every setting NeoForge Mail reads; the variable name is the field name in upper case."""

    # Errors never echo a value: SMTP_URLS and SMTP_PASSWORD hold secrets, and a traceback may be logged.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    # Redis: broker, result backend and our status store, all in one database.
    redis_url: str = "redis://redis:6379/0"
    redis_tls_ca_file: Path | None = None  # CA bundle for rediss:// (default: the system's)
    # Sentinels ("host:port,..."): every client follows REDIS_SENTINEL_MASTER's primary, and
    # REDIS_URL gives only the database, password and scheme (README "Running on several hosts").
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = []
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: SecretStr | None = None
    # Acknowledged means replicated: WAIT for this many replicas after recording an email (a
    # timeout still accepts it, counted in neoforge_emails_unreplicated_total).
    redis_wait_replicas: int = Field(0, ge=0, le=10)
    redis_wait_timeout: float = Field(0.5, gt=0, le=30)
    # Queueing is refused (QueueFull) once Redis uses all but this percentage of
    # its maxmemory: the rest is for the workers' own writes (acknowledgements,
    # outcomes, freeing sent emails' content), so they drain what is queued.
    redis_memory_headroom: float = Field(10.0, ge=0, lt=100)
    # Where a worker keeps deliveries Redis would not record (neoforge/journal.py)
    # until it takes writes again: a folder that survives restarts of the host's workers.
    email_journal_dir: Path = Field(default_factory=lambda: Path.home() / ".local/state/neoforge/journal")

    # SMTP
    smtp_host: str = "localhost"
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_ssl_tls: bool = False
    # Development only when false: no certificate or hostname check at all.
    smtp_validate_certs: bool = True
    # A private CA bundle to verify the SMTP server against (hostname still
    # checked); default: the system's CAs.
    smtp_ca_file: Path | None = None
    # Domains that are not globally deliverable and yet accepted, as a comma-
    # separated list of suffixes: "local" admits corp.local (and local itself),
    # "test" admits *.test. Special-use names (.local, .test, .localhost,
    # .invalid, .onion, .arpa) and names without a dot are refused for
    # recipients, SMTP_FROM and EMAIL_REDIRECT_TO unless listed here; names
    # such as corp.internal or corp.example need no entry. Default: none.
    # (Declared before SMTP_FROM, whose check reads it.)
    email_allow_special_domains: Annotated[list[str], NoDecode] = []
    smtp_from: str = "noreply@example.com"
    smtp_from_name: str = "NeoForge"
    smtp_timeout: float = Field(30.0, gt=0)
    # Sending SMTP_PASSWORD over a connection without TLS is refused unless this
    # is set (for a local mail catcher only).
    smtp_allow_plaintext_auth: bool = False
    # A setup failure (login refused, TLS failure) pauses sending for every
    # worker: first for SMTP_PAUSE_SECONDS, doubling while probes keep failing,
    # up to SMTP_PAUSE_MAX_SECONDS. Emails wait; none is dead-lettered for it.
    smtp_pause_seconds: float = Field(30.0, gt=0)
    smtp_pause_max_seconds: float = Field(600.0, gt=0)
    # A connection lost after DATA began: "retry" (at least once, as mail
    # servers behave; a rare duplicate) or "dead_letter" (never twice; a
    # person requeues).
    email_unknown_outcome: Literal["retry", "dead_letter"] = "retry"
    # Sending policy (README "Sending policy"). Outbound rate limit of every
    # worker together, per provider: "14/s", "20/m", "1000/h", "20/5s"; unset: none.
    smtp_rate_limit: str | None = None
    # Per recipient domain on top: "gmail.com=20/s,yahoo.com=5/s".
    email_domain_limits: str = ""
    # A "too much mail" reply holds every sender of that provider this long,
    # then halves its rate for SMTP_THROTTLE_RECOVER_SECONDS.
    smtp_throttle_seconds: float = Field(30.0, gt=0)
    smtp_throttle_recover_seconds: float = Field(300.0, ge=0)
    # Several providers: "smtp://user:pass@host:587?rate=14/s,smtps://..." (a
    # secret: it holds passwords). Unset: the SMTP_HOST... variables above.
    smtp_urls: SecretStr | None = None
    smtp_strategy: Literal["failover", "round_robin"] = "failover"
    # A provider's circuit opens (sending moves to the next) after one
    # connection, timeout, TLS or login failure, or SMTP_FAILOVER_4XX 4xx replies
    # within a minute; first for SMTP_FAILOVER_SECONDS, doubling while its
    # probes fail, up to SMTP_PAUSE_MAX_SECONDS.
    smtp_failover_4xx: int = Field(20, ge=1)
    smtp_failover_seconds: float = Field(30.0, gt=0)
    # The largest encoded message (headers, bodies, attachments as sent).
    email_max_message_bytes: int = Field(10_000_000, ge=10_000)

    # HTTP API
    api_keys: Annotated[list[str], NoDecode] = []
    api_max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    api_rate_limit_requests: int = Field(600, ge=1)  # per key and minute
    api_rate_limit_recipients: int = Field(5000, ge=1)  # per key and minute
    # Reads (status polling, listings) have their own allowance, per key and minute.
    api_rate_limit_reads: int = Field(6000, ge=1)

    # The operator console at /console. CONSOLE_USERS: comma-separated
    # name:role:hash entries (role viewer or operator; hash from
    # `neoforge console-hash-password`). API keys sign in as CONSOLE_API_KEY_ROLE.
    console_users: Annotated[list[str], NoDecode] = []
    console_api_key_role: Literal["operator", "viewer", "none"] = "operator"
    # Signs session cookies; unset: a random key kept in Redis, shared by every API process.
    console_secret: SecretStr | None = None
    console_session_seconds: int = Field(8 * 3600, ge=60)
    # Failed sign-ins allowed per client address and 15 minutes.
    console_signin_limit: int = Field(10, ge=1)

    # Staging safety: send everything to one address, or only to these domains.
    email_redirect_to: str | None = None
    email_allowed_domains: Annotated[list[str], NoDecode] = []

    # Retries: exponential backoff with jitter, capped.
    email_max_retries: int = Field(5, ge=0, le=100)
    email_retry_backoff: float = Field(30.0, gt=0)
    email_retry_backoff_max: float = Field(900.0, gt=0)

    # Limits on what may be queued.
    email_max_recipients: int = Field(50, ge=1)
    email_max_body_bytes: int = Field(1_048_576, ge=1)
    email_max_attachments_bytes: int = Field(10_485_760, ge=0)

    # How long a finished email's status stays readable.
    email_status_ttl: int = Field(7 * 24 * 3600, ge=60)

    # Delivery guarantees. A message taken by a worker that dies comes back
    # after the visibility timeout; nothing may stay in the broker longer than
    # a fraction of it (see neoforge/scheduler.py), and a task may not run
    # longer than half of it.
    broker_visibility_timeout: int = Field(300, ge=2)
    email_task_time_limit: int = Field(120, ge=1)
    email_idempotency_window: int = Field(24 * 3600, ge=1)
    email_max_schedule_days: int = Field(30, ge=1, le=365)

    # Celery's pool for `celery -A tasks worker` (it ignores `--pool prefork` once one is configured).
    # Threads: each email mostly waits on its SMTP server, so one process keeps many in flight.
    worker_pool: Literal["threads", "prefork", "solo"] = "threads"
    # Threads pool: processes one `celery -A tasks worker` runs (default one per CPU; tasks/siblings.py).
    worker_processes: int | None = Field(None, ge=1, le=256)
    # Tasks at once per worker process: threads (default 32), or prefork pool processes (one per CPU).
    worker_concurrency: int | None = Field(None, ge=1, le=1000)
    # Bulk emails per broker message (one task sends them side by side).
    email_bulk_batch_size: int = Field(20, ge=1, le=500)
    # SMTP dialogues (and so connections) at once per worker process.
    smtp_max_connections: int = Field(50, ge=1, le=1000)
    # Seconds a pooled SMTP connection may stay idle before it is closed
    # (even when no email comes to take it).
    smtp_idle_timeout: float = Field(30.0, gt=0)

    # Shutdown: on a second SIGTERM/SIGINT (cold shutdown) tasks in progress
    # get this many seconds to finish before their messages are handed back.
    worker_soft_shutdown_timeout: float = Field(10.0, ge=0)
    # Run a worker thread inside the API process (single-process deployments only).
    embedded_worker: bool = False

    # Sending policy (README "Sending policy"). Suppression: a recipient refused
    # at RCPT as unknown (550 5.1.1, ...) is suppressed, for good or for this
    # many days (0: for good).
    email_suppress_bounces: bool = True
    email_suppression_bounce_days: float = Field(0.0, ge=0)
    # Delivery events: a signed POST per event to this URL (none when unset).
    email_webhook_url: str | None = None
    email_webhook_secret: SecretStr | None = None
    email_webhook_include_address: bool = False
    email_webhook_timeout: float = Field(10.0, gt=0, le=60)
    email_webhook_max_retries: int = Field(8, ge=0, le=100)
    email_webhook_retry_backoff: float = Field(5.0, gt=0)
    email_webhook_retry_backoff_max: float = Field(600.0, gt=0)
    # One-click unsubscribe (RFC 8058) for bulk mail with a List-Id: the public
    # base URL of this API (https://mail.example.com), the key of its tokens,
    # and an optional mailto address for the List-Unsubscribe header.
    email_unsubscribe_url: str | None = None
    email_unsubscribe_secret: SecretStr | None = None
    email_unsubscribe_mailto: str | None = None
    # DKIM signing, off unless all three are set.
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key_file: Path | None = None

    templates_dir: Path = _DEFAULT_TEMPLATES

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator(
        "api_keys", "email_allowed_domains", "email_allow_special_domains", "console_users", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _sentinel_addresses(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        addresses = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} is not host:port")
            addresses.append((host, int(port)))
        return addresses

    @field_validator("console_users")
    @classmethod
    def _console_users(cls, value: list[str]) -> list[str]:
        names = set()
        for number, entry in enumerate(value, 1):
            if not _CONSOLE_USER.fullmatch(entry):
                raise ValueError(f"entry {number} is not name:viewer|operator:<console-hash-password output>")
            name = entry.split(":", 1)[0]
            if name in names:
                raise ValueError(f"entry {number} repeats the name {name}")
            names.add(name)
        return value

    @field_validator("email_allowed_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [domain.lower().lstrip("@") for domain in value]

    @field_validator("email_allow_special_domains")
    @classmethod
    def _special_domains(cls, value: list[str]) -> list[str]:
        return [check_domain_suffix(suffix) for suffix in value]

    @field_validator("smtp_from", "email_redirect_to")
    @classmethod
    def _address(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        special = info.data.get("email_allow_special_domains", [])
        return check_mailbox(value, special, display_name=False).address

    @field_validator("smtp_from_name")
    @classmethod
    def _single_line(cls, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("smtp_ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # SMTP_CA_FILE= (as compose files pass an unset variable) means the system's CAs.
        return None if value == "" else value

    @field_validator("smtp_ca_file")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        try:
            ssl.create_default_context(cafile=str(value))
        except OSError as exc:  # ssl.SSLError included
            raise ValueError(f"{value} cannot be read as a PEM CA bundle: {exc}") from exc
        return value.resolve()

    @field_validator("smtp_rate_limit", "email_domain_limits", mode="before")
    @classmethod
    def _rates(cls, value: object, info: ValidationInfo) -> object:
        if value in ("", None):
            return None if info.field_name == "smtp_rate_limit" else ""
        if isinstance(value, str):
            (parse_rate if info.field_name == "smtp_rate_limit" else parse_domain_limits)(value)
        return value

    @field_validator("smtp_urls")
    @classmethod
    def _urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_urls(value.get_secret_value())
        return value

    def endpoints(self) -> list[Endpoint]:
        """The SMTP providers in order: SMTP_URLS, or the one the SMTP_HOST... variables describe."""
        rate = parse_rate(self.smtp_rate_limit) if self.smtp_rate_limit else None
        if self.smtp_urls is None:
            name = f"{self.smtp_host}:{self.smtp_port}"
            return [Endpoint(name, self.smtp_host, self.smtp_port, self.smtp_user, self.smtp_password,
                             self.smtp_starttls, self.smtp_ssl_tls, rate)]  # fmt: skip
        found = parse_urls(self.smtp_urls.get_secret_value())
        return [e if e.rate is not None or rate is None else replace(e, rate=rate) for e in found]

    def domain_limits(self) -> dict[str, Rate]:
        """EMAIL_DOMAIN_LIMITS as {domain: Rate}."""
        return parse_domain_limits(self.email_domain_limits)

    @field_validator(
        "email_webhook_url", "email_unsubscribe_url", "email_unsubscribe_mailto", "dkim_domain",
        "dkim_selector", "dkim_private_key_file", "email_webhook_secret", "email_unsubscribe_secret",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("email_webhook_url", "email_unsubscribe_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(("https://", "http://")) or len(value) < 10):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("email_unsubscribe_mailto")
    @classmethod
    def _mailto(cls, value: str | None) -> str | None:
        return None if value is None else check_mailbox(value, display_name=False).address

    @field_validator("dkim_private_key_file")
    @classmethod
    def _dkim_key(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_key(value)
        return value

    @property
    def dkim_key(self) -> bytes | None:
        """The DKIM private key (PEM), or None when signing is off."""
        if not (self.dkim_domain and self.dkim_selector and self.dkim_private_key_file):
            return None
        return check_key(self.dkim_private_key_file)

    @field_validator("templates_dir")
    @classmethod
    def _templates_exist(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value.resolve()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.email_retry_backoff_max < self.email_retry_backoff:
            raise ValueError("EMAIL_RETRY_BACKOFF_MAX must be at least EMAIL_RETRY_BACKOFF")
        if self.email_task_time_limit * 2 > self.broker_visibility_timeout:
            raise ValueError("EMAIL_TASK_TIME_LIMIT must be at most half of BROKER_VISIBILITY_TIMEOUT")
        if self.smtp_starttls and self.smtp_ssl_tls:
            raise ValueError("SMTP_STARTTLS and SMTP_SSL_TLS cannot both be true")
        dkim = (self.dkim_domain, self.dkim_selector, self.dkim_private_key_file)
        if any(dkim) and not all(dkim):
            raise ValueError("DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE go together")
        if self.email_webhook_url and not self.email_webhook_secret:
            raise ValueError("EMAIL_WEBHOOK_URL needs EMAIL_WEBHOOK_SECRET (the key its signatures use)")
        if self.email_unsubscribe_url and not self.email_unsubscribe_secret:
            raise ValueError("EMAIL_UNSUBSCRIBE_URL needs EMAIL_UNSUBSCRIBE_SECRET (the key of its tokens)")
        if self.email_webhook_retry_backoff_max < self.email_webhook_retry_backoff:
            raise ValueError("EMAIL_WEBHOOK_RETRY_BACKOFF_MAX must be at least EMAIL_WEBHOOK_RETRY_BACKOFF")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build the settings once per process; raise ConfigurationError naming a bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigurationError(f"invalid setting {name}: {plain_message(first['msg'])}") from exc
