"""Celery configuration for ``celery -A tasks worker``.

Lowercase keys from celery/app/defaults.py only (Celery silently ignores a key
it does not know; tests/test_config.py checks every key here is a real one).
Values come from neoforge's settings, read when Celery first needs its
configuration, not when this file is written.
"""

import ssl

from kombu import Queue

from neoforge.errors import ConfigurationError
from neoforge.redis_client import celery_urls
from neoforge.settings import get_settings

try:
    _settings = get_settings()
except ConfigurationError as _exc:
    # One line naming the variable, not a traceback.
    raise SystemExit(f"neoforge: {_exc}") from None

# REDIS_URL, or with REDIS_SENTINELS kombu's and Celery's own Sentinel clients.
broker_url, _sentinel_options = celery_urls(_settings)
# "class+url": Celery's Redis backend, without a subscription per publish.
_backend = "QuietSentinelBackend" if _sentinel_options else "QuietRedisBackend"
result_backend = f"tasks.results:{_backend}+{broker_url}"
result_backend_transport_options = dict(_sentinel_options)

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Transactional mail (resets, codes) and bulk mail wait in separate queues.
# A worker also consumes Celery's default queue, "celery": a client that
# knows only the task's name (send_task from another service, with Celery's
# defaults) publishes there, and it must never be a silent sink.
task_queues = [Queue("transactional"), Queue("bulk"), Queue("celery"), Queue("webhooks")]
task_default_queue = "transactional"
# Delivery events for EMAIL_WEBHOOK_URL wait in their own queue (tasks/webhooks.py):
# a slow or failing receiver never holds up mail.
task_routes = {"neoforge.deliver_webhook": {"queue": "webhooks"}}

# The threads pool: sending an email is mostly waiting on the SMTP server, so
# one process keeps many emails in flight on one event loop and a pool of
# reused SMTP connections (neoforge/delivery.py). Run one worker process per
# core. WORKER_POOL=prefork still works; the task bounds its own SMTP dialogue
# either way (the threads pool has no hard time limit).
worker_pool = _settings.worker_pool
worker_concurrency = _settings.worker_concurrency or (32 if worker_pool == "threads" else None)

# Status visible to Flower and the result backend. No STARTED state in the
# backend (a read and a write per email): our record says "sending", and
# Flower still sees task-started events. No extended results: they would keep
# a message's arguments (a by-name client's addresses and body) in Redis.
task_track_started = False
result_extended = False
result_expires = _settings.email_status_ttl
# Task events (three Redis publishes per email, about 15% of a worker's
# throughput, measured with bench/) only while someone watches: Flower turns
# them on in every worker every 5 s while it runs (its --enable_events,
# default on), as does `celery -A tasks control enable_events`. Worker
# heartbeats, and our own metrics and statuses, do not depend on them.
worker_send_task_events = False
# No "task-sent" event: it is a second Redis message for every email queued
# (about a third of the enqueue cost, measured with bench/), and our record
# already says "queued" from the first instant. Flower sees each email from
# the moment a worker receives it.
task_send_sent_event = False

# A message is acknowledged only after the task ends; a process holds at most
# one unacknowledged message per thread.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Nothing lost, nothing hanging. A message taken by a worker that dies is
# restored after the visibility timeout by a sweep every tenth of it, so a
# crash delays an email by at most about 1.1 x the timeout. Countdowns longer
# than a fifth of it never reach the broker (neoforge/scheduler.py), and a task
# runs at most half of it, so a message is never restored while still in hand.
_visibility = _settings.broker_visibility_timeout
broker_transport_options = {
    "visibility_timeout": _visibility,
    "unacked_restore_interval": max(1, _visibility // 10),
    "unacked_restore_throttle": 1,
    "socket_timeout": 15.0,
    "socket_connect_timeout": 5.0,
    **_sentinel_options,
}
task_time_limit = _settings.email_task_time_limit
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}
broker_connection_retry_on_startup = True
# Redis refusing a write (maxmemory with noeviction, or MISCONF when its disk
# fails) is a ResponseError, which kombu counts as a channel error: without
# this the worker ends ("Unrecoverable error: OutOfMemoryError") and cannot
# start while Redis is full. With it the consumer reconnects, and keeps trying
# until Redis takes writes again (tasks/storage.py pauses it meanwhile).
broker_channel_error_retry = True
broker_connection_timeout = 5.0
redis_socket_connect_timeout = 5.0
redis_socket_timeout = 10.0

# Warm shutdown (SIGTERM) lets tasks in progress finish and hands unstarted
# messages back; a cold one still gives them this long, then requeues them.
worker_soft_shutdown_timeout = _settings.worker_soft_shutdown_timeout
worker_enable_soft_shutdown_on_idle = True

# rediss:// must check the server's certificate: kombu and Celery's backend
# skip verification for a bare rediss:// URL unless told otherwise.
if _settings.redis_url.startswith("rediss://"):
    _tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if _settings.redis_tls_ca_file is not None:
        _tls["ssl_ca_certs"] = str(_settings.redis_tls_ca_file)
    broker_use_ssl = _tls
    redis_backend_use_ssl = _tls

worker_hijack_root_logger = False
