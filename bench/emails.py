"""The email both systems send: about 2 KB of plain text and HTML to one recipient."""

from __future__ import annotations

from typing import Any

__all__ = ["SENDER", "email"]

SENDER = "noreply@bench.example.com"

_ITEMS = [(f"Item {n}: a sturdy thing of some kind", n * 7 % 50 + 5) for n in range(1, 9)]
_TEXT = (
    "Hello {name},\n\n"
    "Thank you for your order #{number}. It has shipped and should reach you within three "
    "working days. Here is what is in the parcel:\n\n"
    + "".join(f"  - {label} ... EUR {price}.00\n" for label, price in _ITEMS)
    + "\nYou can follow the parcel at https://shop.example.com/orders/{number}/tracking and "
    "change the delivery address until it leaves our warehouse.\n\n"
    "If anything is wrong with your order, reply to this email or write to "
    "support@shop.example.com and we will put it right.\n\n"
    "Kind regards,\nThe Example Shop team\n"
)
_HTML = (
    '<!doctype html><html><body style="font-family: sans-serif">'
    "<p>Hello {name},</p>"
    "<p>Thank you for your order <strong>#{number}</strong>. It has shipped and should reach you "
    "within three working days.</p><table>"
    + "".join(f'<tr><td>{label}</td><td align="right">EUR {price}.00</td></tr>' for label, price in _ITEMS)
    + '</table><p><a href="https://shop.example.com/orders/{number}/tracking">Follow the parcel</a>'
    "</p><p>If anything is wrong with your order, reply to this email and we will put it right.</p>"
    "<p>Kind regards,<br>The Example Shop team</p></body></html>"
)


def email(number: int) -> dict[str, Any]:
    """The keyword arguments of email NUMBER: ``to``, ``subject``, ``text``, ``html``."""
    name = f"user{number}"
    return {
        "to": [f"{name}@example.com"],
        "subject": f"Your order #{number} has shipped",
        "text": _TEXT.format(name=name, number=number),
        "html": _HTML.format(name=name, number=number),
    }
