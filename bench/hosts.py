"""Several hosts on one machine: emails/s with 1, 2 and 3 worker hosts, and recovery from the primary's loss.

``python -m bench.hosts [--emails N] [--lost N]`` (root: it builds hosts from network namespaces,
the test bed of tests/hosts.py: three Redis hosts with a Sentinel each, an SMTP host, an API
host, worker hosts on REDIS_SENTINELS). All hosts share this machine's cores, so the rates are a
ratio of scaling, not a capacity claim. Two servers:

- ``instant``: the SMTP host answers at once, workers at their default concurrency (32 threads):
  bound by this machine's CPU, which every host shares.
- ``100 ms``: the SMTP host takes 0.1 s per message and each worker sends 4 at a time: bound by
  each host's own concurrency, as with a remote provider, so hosts add up.

Each round queues N emails through the API with no worker running, starts the worker hosts, and
counts arrivals at the SMTP host from the moment every host has delivered one. Then a run of
--lost emails with two worker hosts loses its Redis primary (SIGKILL) after a quarter is
delivered: the Sentinels' promotion, the API's first acknowledgement after the loss and the
longest pause in arrivals at the SMTP host after it are timed, lost and duplicated emails counted.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from neoforge.processes import wait_until
from tests.hosts import Bed, BedUnavailable, Network

WORKERS = [("w1", 41), ("w2", 42), ("w3", 43)]


def _queue(bed: Bed, prefix: str, emails: int) -> set[str]:
    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(bed.post_until_acknowledged, [f"{prefix}-{i}" for i in range(emails)]))


def _scaling(bed: Bed, hosts: int, emails: int, delay: float, concurrency: dict[str, str]) -> float:
    bed.set_smtp(data_delay=delay)
    ids = _queue(bed, f"scale-{hosts}-{delay}-{time.time_ns()}", emails)
    for name, number in WORKERS[:hosts]:
        bed.add_worker(name, number, **concurrency)
    wait_until(lambda: len({e["id"] for e in bed.deliveries(ids)}) == len(ids), 600, "every email", 0.2)
    bed.stop_workers()
    arrivals = sorted((e["at"], e["peer"]) for e in bed.deliveries(ids))
    first = {peer: at for at, peer in reversed(arrivals)}
    start = max(first.values())
    window = [at for at, _ in arrivals if at >= start]
    return (len(window) - 1) / (window[-1] - start)


def _recovery(bed: Bed, emails: int) -> dict[str, float]:
    bed.set_smtp()
    bed.add_worker("w1", 41)
    bed.add_worker("w2", 42)
    acknowledged: list[tuple[str, float]] = []

    def clients() -> None:
        def one(key: str) -> None:
            acknowledged.append((bed.post_until_acknowledged(key), time.time()))

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(one, [f"lost-{time.time_ns()}-{i}" for i in range(emails)]))

    sender = threading.Thread(target=clients, daemon=True)
    sender.start()

    def supervised(check: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: bed.supervise() or check()

    wait_until(supervised(lambda: len(bed.deliveries({i for i, _ in acknowledged[:]})) >= emails // 4),
               120, "a quarter delivered", 0.1)  # fmt: skip
    old = bed.primary()
    bed.kill_redis(old)
    killed = time.time()
    wait_until(supervised(lambda: bed.primary() is not old), 60, "a replica promoted", 0.05)
    promoted = time.time() - killed
    wait_until(supervised(lambda: not sender.is_alive()), 300, "every email acknowledged", 0.1)
    ids = {i for i, _ in acknowledged}
    done = supervised(lambda: {e["id"] for e in bed.deliveries(ids)} >= ids)
    wait_until(done, 300, "every acknowledged email delivered", 0.2)
    counts = Counter(e["id"] for e in bed.deliveries(ids))
    arrivals = [killed, *sorted(e["at"] for e in bed.deliveries() if e["at"] > killed)]
    bed.stop_workers()
    bed.start_redis(old, bed.primary())
    return {"promoted": promoted, "api": min(at for _, at in acknowledged if at > killed) - killed,
            "pause": _longest_pause(arrivals), "acknowledged": len(ids), "lost": len(ids - set(counts)),
            "twice": sum(n > 1 for n in counts.values()), "restarts": bed.restarts}  # fmt: skip


def _longest_pause(times: list[float]) -> float:
    """The longest time between two arrivals at the SMTP host (the first: the loss itself)."""
    return max(later - earlier for earlier, later in itertools.pairwise(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=600, help="emails per scaling round")
    parser.add_argument("--lost", type=int, default=2000, help="emails in the primary-loss run")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="neoforge-bench-hosts-"))
    network = Network()
    try:
        network.open()
        bed = Bed(network, folder)
        bed.start()
        servers = {"instant": (0.0, {}), "100 ms": (0.1, {"WORKER_CONCURRENCY": "4"})}
        rates = {name: [_scaling(bed, n, args.emails, delay, conc) for n in (1, 2, 3)]
                 for name, (delay, conc) in servers.items()}  # fmt: skip
        lost = _recovery(bed, args.lost)
    except BedUnavailable as exc:
        print(f"bench.hosts needs network namespaces: {exc}")
        return 2
    finally:
        network.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"emails/s delivered, {args.emails} queued per round (one machine, 2 cores: a ratio of scaling)")
    print(f"  {'SMTP server':<12}{'1 host':>10}{'2 hosts':>10}{'3 hosts':>10}{'3 / 1':>8}")
    for name, (one, two, three) in rates.items():
        print(f"  {name:<12}{one:>10.1f}{two:>10.1f}{three:>10.1f}{three / one:>7.2f}x")
    print(f"Redis primary lost (SIGKILL) during {lost['acknowledged']:.0f} emails, two worker hosts:")
    print(f"  replica promoted after {lost['promoted']:.1f} s; API acknowledging again after "
          f"{lost['api']:.1f} s; longest pause in deliveries after the loss "
          f"{lost['pause']:.1f} s")  # fmt: skip
    print(f"  lost {lost['lost']:.0f}, sent twice {lost['twice']:.0f} (unknown outcome), "
          f"worker restarts {lost['restarts']:.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
