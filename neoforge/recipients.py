"""Each recipient's outcome: delivered, deferred (4xx: retried, only them), rejected (5xx), held back
or suppressed.

An email to several people can be taken for some and deferred for others
(greylisting, a full mailbox). The deferred ones, and only they, are retried
under the backoff policy with the same Message-ID; the others count as
delivered. What is stored is masked (``z***@example.com``): the status record
never holds an address. Recipients are named by their position in the email's
envelope, which the payload fixes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from neoforge.redact import mask_address, mask_addresses
from neoforge.smtp.dialogue import Accepted

__all__ = ["Delivered", "Envelope", "plan"]

Delivered = Literal["all", "some", "none"]


def _entry(address: str, outcome: str, code: int | None, message: str) -> dict[str, Any]:
    return {
        "address": mask_address(address),
        "outcome": outcome,
        "code": code,
        "message": mask_addresses(message)[:200],
    }


@dataclass
class Envelope:
    """Who this attempt sends to (``targets``: position, address), and every outcome so far."""

    targets: list[tuple[int, str]]
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    everyone: list[str] = field(default_factory=list)  # the whole envelope, by position

    @property
    def addresses(self) -> list[str]:
        return [address for _, address in self.targets]

    def suppress(self, suppressed: set[str]) -> None:
        """Take the SUPPRESSED addresses out of this attempt, recorded as such (never sent to)."""
        for position, address in self.targets:
            if address in suppressed:
                self.outcomes[f"t{position}"] = _entry(address, "suppressed", None, "on the suppression list")
        self.targets = [(p, a) for p, a in self.targets if a not in suppressed]

    def settle(self, accepted: Accepted) -> tuple[list[int], dict[str, str], Delivered]:
        """Record ACCEPTED's answer per target: (positions still deferred, record fields, how many got it)."""
        refused = {r["address"]: ("rejected", r) for r in accepted.rejected}
        refused |= {r["address"]: ("deferred", r) for r in accepted.deferred}
        deferred: list[int] = []
        for position, address in self.targets:
            kind, reply = refused.get(address, ("delivered", None))
            if reply is None:
                self.outcomes[f"t{position}"] = _entry(address, "delivered", 250, accepted.reply or "")
            else:
                self.outcomes[f"t{position}"] = _entry(address, kind, reply["code"], reply["message"])
                if kind == "deferred":
                    deferred.append(position)
        fields, delivered = self.fields()
        if deferred:
            fields["rcpt_todo"] = json.dumps(deferred)
        return deferred, fields, delivered

    def fields(self) -> tuple[dict[str, str], Delivered]:
        """The record fields of the outcomes so far, and how many recipients got the email."""
        done = [entry["outcome"] for entry in self.outcomes.values()]
        delivered: Delivered = (
            "all" if all(o == "delivered" for o in done) else "some" if "delivered" in done else "none"
        )
        text = json.dumps(self.outcomes, separators=(",", ":"))
        return {"outcomes": text, "delivered": delivered}, delivered

    def report(self) -> list[dict[str, Any]]:
        """Each recipient's outcome for an event: ``address`` (raw, if known), ``masked``, ``outcome``."""
        found = []
        for key, entry in self.outcomes.items():
            position = int(key[1:]) if key[0] == "t" and key[1:].isdigit() else -1
            address = self.everyone[position] if 0 <= position < len(self.everyone) else None
            found.append({"address": address, "masked": entry["address"], "outcome": entry["outcome"]})
        return found


def plan(envelope: list[str], held: list[dict[str, Any]], todo: str, outcomes: str) -> Envelope:
    """This attempt's Envelope: ENVELOPE's recipients left to do (TODO, JSON positions; all if empty).

    HELD are recipients kept back by policy (EMAIL_ALLOWED_DOMAINS), recorded as such.
    """
    left = set(json.loads(todo)) if todo else None
    targets = [(i, address) for i, address in enumerate(envelope) if left is None or i in left]
    found: dict[str, dict[str, Any]] = json.loads(outcomes) if outcomes else {}
    for j, item in enumerate(held):
        found[f"h{j}"] = _entry(item["address"], "held", None, item.get("message", ""))
    return Envelope(targets, found, list(envelope))
