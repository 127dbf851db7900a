"""The worker-side request of our tasks: only the email id wherever Celery reports arguments.

A client that publishes ``neoforge.send_email`` by name (``send_task``,
``celery call``, Flower's send-task) puts the email's fields (addresses, body)
in the message and in its ``argsrepr``/``kwargsrepr`` headers. The worker
repeats those in task events (Flower's task list and pages), in ``inspect``
replies and in logs. Celery's documented hook for this is the task's
``Request`` class (celery/worker/request.py): ours reports no arguments.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

__all__ = ["RedactingRequest"]


class RedactingRequest(Request):  # type: ignore[misc]
    """A Celery request whose reported arguments carry no address and no body."""

    @property
    def argsrepr(self) -> str:
        return "()"

    @property
    def kwargsrepr(self) -> str:
        return f"{{'email_id': '{self.id}'}}" if self.name == "neoforge.send_email" else "{}"

    def info(self, safe: bool = False) -> dict[str, Any]:
        found: dict[str, Any] = super().info(safe=True)
        found.update(args=self.argsrepr, kwargs=self.kwargsrepr)
        return found

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.humaninfo()} {self.argsrepr} {self.kwargsrepr}>"
