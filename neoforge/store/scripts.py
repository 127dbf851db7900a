"""The Lua scripts of neoforge/store/lua/, read once per process and registered per client."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

__all__ = ["NAMES", "Scripts", "source"]

NAMES = (
    "begin", "charge", "create", "finish_new", "pause", "purge", "release", "requeue", "sent", "unplaced",
)  # fmt: skip


@cache
def source(name: str) -> str:
    """The text of the script NAME (``lua/NAME.lua``)."""
    if name not in NAMES:
        raise KeyError(name)
    return resources.files("neoforge.store").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """Every script, registered on one client (EVALSHA, loaded again if Redis restarted)."""

    def __init__(self, client: redis.Redis) -> None:
        self.begin: Script = client.register_script(source("begin"))
        self.charge: Script = client.register_script(source("charge"))
        self.create: Script = client.register_script(source("create"))
        self.finish_new: Script = client.register_script(source("finish_new"))
        self.pause: Script = client.register_script(source("pause"))
        self.purge: Script = client.register_script(source("purge"))
        self.release: Script = client.register_script(source("release"))
        self.requeue: Script = client.register_script(source("requeue"))
        self.sent: Script = client.register_script(source("sent"))
        self.unplaced: Script = client.register_script(source("unplaced"))
