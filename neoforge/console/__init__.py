"""The operator console at ``/console``: server-rendered pages over the status store.

``pages`` (overview, emails, one email, dead letters, batches; sign-in),
``actions`` (the forms), ``session`` (signed cookie, CSRF, roles),
``passwords`` (CONSOLE_USERS hashes), ``overview`` and ``listing`` (what is
read), ``web`` (templates, headers, assets). Mounted by neoforge.api.
"""

from fastapi import APIRouter

from neoforge.console.actions import actions
from neoforge.console.pages import pages
from neoforge.console.passwords import hash_password

__all__ = ["console", "hash_password"]

console = APIRouter()
console.include_router(pages)
console.include_router(actions)
