"""The development mail viewer: what ``neoforge dev``'s catcher caught, in the browser."""

from neoforge.mailviewer.mailbox import Mailbox, MessageNotFound
from neoforge.mailviewer.server import MailViewer

__all__ = ["MailViewer", "Mailbox", "MessageNotFound"]
