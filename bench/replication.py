"""What "acknowledged means replicated" costs: ``.delay()`` calls/s with and without Redis WAIT.

``python -m bench.replication [--emails N] [--rounds R]``: a redis-server primary and one replica
of its own (free loopback ports, a private folder, stopped by PID), then R rounds, alternating,
of N ``send_email.delay()`` calls from one thread in a fresh process, with REDIS_WAIT_REPLICAS=0
and =1. Prints calls/s per setting (best round) and the ratio. No worker runs: this measures the
enqueue path only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from neoforge.processes import free_port, redis_server_command, start, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
from tasks import send_email
n = int(sys.argv[1])
send_email.delay(to=["warm@example.com"], subject="warm", text="x")
began = time.perf_counter()
for i in range(n):
    send_email.delay(to=[f"r{i}@example.com"], subject="replicated", text="hello " * 300)
print(json.dumps({"rate": n / (time.perf_counter() - began)}))
"""


def _round(port: int, replicas: int, emails: int) -> float:
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_WAIT_REPLICAS": str(replicas),
           "SMTP_HOST": "127.0.0.1", "SMTP_STARTTLS": "false", "LOG_LEVEL": "WARNING"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _CHILD, str(emails)], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return float(json.loads(done.stdout.strip().splitlines()[-1])["rate"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="neoforge-bench-replication-"))
    primary, replica = free_port(), free_port()
    processes = []
    try:
        for port, extra in ((primary, []), (replica, ["--replicaof", "127.0.0.1", str(primary)])):
            (folder / str(port)).mkdir()
            command = [*redis_server_command(port, folder / str(port)), *extra]
            processes.append(start(command, log=folder / f"{port}.log"))
        client = redis.Redis(port=replica, socket_connect_timeout=1, decode_responses=True)
        wait_until(lambda: client.info("replication").get("master_link_status") == "up", 30, "the replica")
        rates: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(args.rounds):
            for replicas in (0, 1):
                redis.Redis(port=primary).flushall()
                rates[replicas].append(_round(primary, replicas, args.emails))
        plain, waited = max(rates[0]), max(rates[1])
        print(f".delay() calls/s, one thread, {args.emails} emails, best of {args.rounds}:")
        print(f"  REDIS_WAIT_REPLICAS=0  {plain:8.1f}")
        print(f"  REDIS_WAIT_REPLICAS=1  {waited:8.1f}   ({waited / plain:.2f}x)")
        print(f"  cost of the WAIT: {1000 / waited - 1000 / plain:.3f} ms per email")
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
