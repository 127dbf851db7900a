"""SMTP: the connection pool, the dialogue with the server, and what its failures mean."""

from neoforge.smtp.dialogue import Accepted, deliver
from neoforge.smtp.pool import Pool, bulk_connections

__all__ = ["Accepted", "Pool", "bulk_connections", "deliver"]
