"""Settings of the workers' liveness: how often the scheduler sweeps, how soon a silent sender's leases go.

Mixed into ``Settings`` (neoforge/settings.py), which stays the one object read by ``get_settings()``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

__all__ = ["LivenessSettings"]


class LivenessSettings(BaseSettings):
    """The liveness fields of ``Settings``; the variable name is the field name in upper case."""

    email_scheduler_interval: float = Field(1.0, gt=0, le=60)
    # Seconds a sending process may go without a heartbeat in Redis before any
    # other sender, on any host, takes over the emails it holds (README
    # "Running on several hosts"). Renewed five times per period.
    email_heartbeat_timeout: float = Field(15.0, ge=0.5, le=600)
