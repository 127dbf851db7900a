"""A Redis primary, two replicas and three Sentinels of our own, on free loopback ports (for tests).

Every process is started here and stopped by ``stop`` (by PID), also after a failed test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from neoforge.processes import free_port, redis_server_command, start, stop, wait_until

MASTER = "neoforge-test"


class SentinelCluster:
    """``redis-server`` primary + two replicas and three ``redis-server --sentinel`` watching them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = [free_port() for _ in range(3)]  # primary, two replicas
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        primary, *replicas = self.ports
        self._server(primary)
        for replica in replicas:
            self._server(replica, "--replicaof", "127.0.0.1", str(primary))
        for replica in replicas:
            wait_until(lambda r=replica: self.client(r).info("replication").get("master_link_status") == "up",
                       20, "the replicas in sync")  # fmt: skip
        for index, port in enumerate(self.sentinel_ports):
            folder = self.folder / f"sentinel{index}"
            folder.mkdir(parents=True)
            config = folder / "sentinel.conf"  # Sentinel rewrites its own file as it learns
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            command = [redis_server_command(port, folder)[0], str(config), "--sentinel"]
            self.sentinels.append(start(command, log=folder / "sentinel.log"))
        for port in self.sentinel_ports:
            sentinel = self.client(port)
            wait_until(lambda s=sentinel: _quorum(s), 30, "the Sentinels' quorum")

    def _server(self, port: int, *extra: str) -> None:
        folder = self.folder / f"redis{port}"
        folder.mkdir(parents=True)
        self.servers[port] = start([*redis_server_command(port, folder), *extra], log=folder / "redis.log")
        wait_until(lambda: bool(self.client(port).ping()), 20, f"redis-server on {port}")

    @staticmethod
    def client(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, decode_responses=True)

    def primary(self) -> int:
        """The port the Sentinels name as the primary now."""
        _, port = self.client(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def kill(self, port: int) -> None:
        """kill -9 the redis-server on PORT (no shutdown, no last save)."""
        process = self.servers.pop(port)
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            stop(process)
        self.sentinels.clear()
        self.servers.clear()


def _quorum(sentinel: redis.Redis) -> bool:
    try:
        return bool(sentinel.execute_command("SENTINEL", "CKQUORUM", MASTER))
    except redis.RedisError:
        return False  # "NOQUORUM": the other Sentinels not discovered yet
