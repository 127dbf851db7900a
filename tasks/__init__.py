"""The Celery app and its tasks: ``celery -A tasks worker`` starts a worker.

Thin glue over the delivery core (neoforge/): the app and its signals
(``app``), the tasks (``email``, ``batch``, ``webhooks``), the worker-side request that
hides arguments (``request``), the result backend (``results``), the
scheduler bootstep (``scheduling``) and the consumer's storage gate (``storage``).
"""

from tasks import siblings
from tasks.app import app
from tasks.batch import send_batch
from tasks.email import send_email
from tasks.scheduling import SchedulerStep
from tasks.storage import StorageGate
from tasks.webhooks import deliver_webhook

siblings.connect()  # one process per CPU, from one command
app.steps["worker"].add(SchedulerStep)
app.steps["consumer"].add(StorageGate)

__all__ = ["app", "deliver_webhook", "send_batch", "send_email"]
