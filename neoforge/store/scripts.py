"""The Lua scripts of neoforge/store/lua/, read once per process and registered per client."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

__all__ = ["NAMES", "Scripts", "source"]

NAMES = (
    "begin", "charge", "circuit", "create", "finish_new", "mark_data", "pace", "pause", "published", "purge",
    "release", "requeue", "sent", "settle", "throttle", "unplaced",
)  # fmt: skip


# Scripts that write for an attempt share its fence check: lua/fence.lua goes in front of them.
_FENCED = frozenset({"mark_data", "sent", "settle"})


def _read(name: str) -> str:
    return resources.files("neoforge.store").joinpath("lua", f"{name}.lua").read_text()


@cache
def source(name: str) -> str:
    """The text of the script NAME (``lua/NAME.lua``, after ``lua/fence.lua`` for the fenced ones)."""
    if name not in NAMES:
        raise KeyError(name)
    return (_read("fence") if name in _FENCED else "") + _read(name)


class Scripts:
    """Every script, registered on one client (EVALSHA, loaded again if Redis restarted)."""

    def __init__(self, client: redis.Redis) -> None:
        self.begin: Script = client.register_script(source("begin"))
        self.charge: Script = client.register_script(source("charge"))
        self.circuit: Script = client.register_script(source("circuit"))
        self.create: Script = client.register_script(source("create"))
        self.finish_new: Script = client.register_script(source("finish_new"))
        self.mark_data: Script = client.register_script(source("mark_data"))
        self.pace: Script = client.register_script(source("pace"))
        self.pause: Script = client.register_script(source("pause"))
        self.published: Script = client.register_script(source("published"))
        self.purge: Script = client.register_script(source("purge"))
        self.release: Script = client.register_script(source("release"))
        self.requeue: Script = client.register_script(source("requeue"))
        self.throttle: Script = client.register_script(source("throttle"))
        self.sent: Script = client.register_script(source("sent"))
        self.settle: Script = client.register_script(source("settle"))
        self.unplaced: Script = client.register_script(source("unplaced"))
