"""The Celery app and its tasks: ``celery -A tasks worker`` starts a worker."""

from tasks.app import app
from tasks.email import send_email

__all__ = ["app", "send_email"]
