"""Signals for in-process listeners, on Celery's own dispatcher (no extra dependency).

``email_event`` is sent in the process that decided an email's fate (a worker,
or the API for an unsubscribe) for every event of neoforge/events.py: sent,
deferred, failed, suppressed, expired, unsubscribed. Receivers get
``event=`` (a dict: ``id``, ``type``, ``email_id``, ``status``, ``attempt``,
``occurred_at``, ...; never the body, the addresses only with
EMAIL_WEBHOOK_INCLUDE_ADDRESS=true)::

    from neoforge.signals import email_event

    @email_event.connect
    def on_email_event(sender, event, **kwargs):
        if event["type"] == "email.failed":
            ...

Celery calls every receiver and logs (never raises) a receiver's exception,
so a listener cannot break delivery; keep receivers quick, they run in the
sending thread.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["email_event"]

email_event = Signal(name="email_event")
