"""Celery configuration for ``celery -A tasks worker``.

Lowercase keys from celery/app/defaults.py only (Celery silently ignores a key
it does not know; tests/test_config.py checks every key here is a real one).
Values come from neoforge's settings, read when Celery first needs its
configuration, not when this file is written.
"""

from kombu import Queue

from neoforge.errors import ConfigurationError
from neoforge.settings import get_settings

try:
    _settings = get_settings()
except ConfigurationError as _exc:
    # One line naming the variable, not a traceback.
    raise SystemExit(f"neoforge: {_exc}") from None

broker_url = _settings.redis_url
# "class+url": Celery's Redis backend, without a subscription per publish.
result_backend = f"tasks.results:QuietRedisBackend+{_settings.redis_url}"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Transactional mail (resets, codes) and bulk mail wait in separate queues.
task_queues = [Queue("transactional"), Queue("bulk")]
task_default_queue = "transactional"

# Status visible to Flower and the result backend.
task_track_started = True
result_extended = True
result_expires = _settings.email_status_ttl
worker_send_task_events = True
task_send_sent_event = True

# A message is acknowledged only after the task ends, one at a time per process.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

broker_connection_retry_on_startup = True
broker_connection_timeout = 5.0
redis_socket_connect_timeout = 5.0
redis_socket_timeout = 10.0

worker_hijack_root_logger = False
