"""How the MIME message is built: fastapi-mail's ``MessageSchema`` and ``get_message``, then our fixes."""

from __future__ import annotations

import io
import uuid
from email.message import Message
from email.utils import make_msgid

from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType, MultipartSubtypeEnum
from starlette.datastructures import Headers, UploadFile

from neoforge.errors import PermanentDeliveryError
from neoforge.message import EmailRequest
from neoforge.settings import Settings
from neoforge.templates import Rendered

__all__ = ["build_message"]


_builders: dict[int, tuple[Settings, FastMail]] = {}


def _mail(settings: Settings) -> FastMail:
    cached = _builders.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    # fastapi-mail only builds the message here; the connection fields are
    # required by its config model but never used to connect.
    config = ConnectionConfig(
        MAIL_USERNAME=settings.smtp_user or "",
        MAIL_PASSWORD=settings.smtp_password or "",
        MAIL_FROM=settings.smtp_from,
        MAIL_FROM_NAME=settings.smtp_from_name,
        MAIL_PORT=settings.smtp_port,
        MAIL_SERVER=settings.smtp_host,
        MAIL_STARTTLS=settings.smtp_starttls,
        MAIL_SSL_TLS=settings.smtp_ssl_tls,
        USE_CREDENTIALS=False,
    )
    mail = FastMail(config)
    _builders.clear()
    _builders[id(settings)] = (settings, mail)
    return mail


async def build_message(email_id: str, request: EmailRequest, body: Rendered, settings: Settings) -> Message:
    """The MIME message for REQUEST: text and HTML alternatives, attachments, our Message-ID."""
    # Plain text first and HTML second: in multipart/alternative the last part
    # is the preferred one.
    if body.text is not None and body.html is not None:
        main, alternative, subtype = body.text, body.html, MessageType.plain
        multipart = MultipartSubtypeEnum.alternative
    elif body.html is not None:
        main, alternative, subtype = body.html, None, MessageType.html
        multipart = MultipartSubtypeEnum.mixed
    else:
        main, alternative, subtype = body.text or "", None, MessageType.plain
        multipart = MultipartSubtypeEnum.mixed
    schema = MessageSchema(
        recipients=list(request.to),
        cc=list(request.cc),
        reply_to=list(request.reply_to),
        subject=request.subject,
        body=main,
        alternative_body=alternative,
        subtype=subtype,
        multipart_subtype=multipart,
        headers=dict(request.headers) or None,
        attachments=[
            UploadFile(
                file=io.BytesIO(item.data()),
                filename=item.filename,
                headers=Headers({"content-type": item.content_type}),
            )
            for item in request.attachments
        ],
    )
    message = await _mail(settings).get_message(schema)
    if not isinstance(message, Message):
        raise PermanentDeliveryError("message could not be built")
    # fastapi-mail sets a charset (and so a base64 transfer encoding) on the
    # multipart container itself, which MIME forbids: keep them on the parts.
    if message.is_multipart():
        del message["Content-Transfer-Encoding"]
        message.del_param("charset")
    # Bcc stays in the envelope only; the id in Message-ID lets a support
    # engineer match a received mail to its status record.
    domain = settings.smtp_from.rpartition("@")[2]
    # fastapi-mail's NameEmail invents a display name from the local part
    # ("alice <alice@example.com>"): write the addresses as given.
    for header, addresses in (("To", request.to), ("Cc", request.cc), ("Reply-To", request.reply_to)):
        if addresses:
            message.replace_header(header, ", ".join(addresses))
    del message["Message-ID"]
    message["Message-ID"] = make_msgid(idstring=email_id, domain=domain)
    # Our own boundaries: without one, the email package draws a random one and
    # compiles a regular expression to check it against the content, a third
    # of the MIME cost per email (py-spy on bench/). 128 random bits cannot
    # turn up in the content by chance.
    for part in message.walk():
        if part.is_multipart():
            part.set_boundary(f"=_{uuid.uuid4().hex}")
    return message
