"""All configuration, read from the environment (and ``.env``) by one cached ``get_settings()``."""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from neoforge.addresses import check_domain_suffix, check_mailbox
from neoforge.errors import ConfigurationError

__all__ = ["Settings", "get_settings"]

_DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class Settings(BaseSettings):
    """Every setting NeoForge Mail reads; the variable name is the field name in upper case."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Redis: broker, result backend and our status store, all in one database.
    redis_url: str = "redis://redis:6379/0"
    redis_tls_ca_file: Path | None = None  # CA bundle for rediss:// (default: the system's)
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
    # The largest encoded message (headers, bodies, attachments as sent).
    email_max_message_bytes: int = Field(10_000_000, ge=10_000)

    # HTTP API
    api_keys: Annotated[list[str], NoDecode] = []
    api_max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    api_rate_limit_requests: int = Field(600, ge=1)  # per key and minute
    api_rate_limit_recipients: int = Field(5000, ge=1)  # per key and minute
    # Reads (status polling, listings) have their own allowance, per key and minute.
    api_rate_limit_reads: int = Field(6000, ge=1)

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
    email_scheduler_interval: float = Field(1.0, gt=0, le=60)

    # Celery's pool for `celery -A tasks worker` (Celery ignores `--pool prefork`
    # on the command line once a pool is configured). Threads: each email
    # mostly waits on its SMTP server, so one process keeps many in flight.
    worker_pool: Literal["threads", "prefork", "solo"] = "threads"
    # Tasks at once per worker process: threads (default 32), or pool
    # processes for prefork (default: one per CPU).
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

    templates_dir: Path = _DEFAULT_TEMPLATES

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("api_keys", "email_allowed_domains", "email_allow_special_domains", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
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
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build the settings once per process; raise ConfigurationError naming a bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigurationError(f"invalid setting {name}: {first['msg']}") from exc
