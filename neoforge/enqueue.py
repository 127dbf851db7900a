"""Everything that happens before a message reaches the broker: validation and the record."""

from __future__ import annotations

from typing import Any

import jinja2
from pydantic import ValidationError

from neoforge.errors import FieldError, InvalidEmail
from neoforge.message import EmailRequest
from neoforge.settings import get_settings
from neoforge.templates import render

__all__ = ["check_renders", "validate"]


def validate(fields: dict[str, Any]) -> EmailRequest:
    """Validate FIELDS and check the template renders; raise InvalidEmail naming the fields."""
    try:
        request = EmailRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEmail([FieldError(tuple(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]) from exc
    check_renders(request)
    return request


def check_renders(request: EmailRequest) -> None:
    """Render the template once now, so a missing variable is the caller's error, not a dead letter."""
    if request.template is None:
        return
    try:
        body = render(request.template, request.context)
    except jinja2.UndefinedError as exc:
        raise InvalidEmail(
            [FieldError(("context",), f"template {request.template!r} needs {exc.message}", "missing")]
        ) from exc
    except jinja2.TemplateError as exc:
        raise InvalidEmail(
            [FieldError(("template",), f"template {request.template!r} cannot be rendered: {exc}")]
        ) from exc
    limit = get_settings().email_max_body_bytes
    for part in (body.html, body.text):
        if part is not None and len(part.encode()) > limit:
            raise InvalidEmail(
                [FieldError(("context",), f"rendered body is larger than {limit} bytes", "too_large")]
            )
