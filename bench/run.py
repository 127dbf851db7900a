"""Run the benchmark: ``python -m bench.run [--quick|--full] [--json PATH]``.

Every scenario runs the baseline and NeoForge Mail one after the other in this
run, on the same machine and the same real servers; the table gives both and
their ratio. Everything is started here on free 127.0.0.1 ports and stopped
again by PID, also on error; ``smtp-sink`` (Debian's ``postfix``) is installed
first if missing, which needs root.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from bench.api import ApiResult, post_emails
from bench.bulk import BULK_CHUNK, LatencyResult, bulk_drain, latency_under_backlog
from bench.bulkapi import probes_during_bulk
from bench.bulkapi import rows as bulk_api_rows
from bench.drain import DrainResult, drain
from bench.profile import Profile
from bench.report import Row, bottlenecks, cpu_cell, render_table, write_json
from bench.sink import ensure_smtp_sink
from bench.stack import ROOT, Stack

__all__ = ["MODES", "Sizes", "main"]

SLOW_REPLY_DELAY = 0.04  # seconds the slow server takes for each reply


@dataclass(frozen=True)
class Sizes:
    """How many emails and requests each scenario uses."""

    loopback: int
    slow_ours: int
    slow_baseline: int  # the baseline manages a few emails a second there
    api_requests: int
    api_warmup: int
    api_concurrency: int
    bulk: int  # (c): recipients, and the baseline's emails
    bulk_backlog: int  # (d): bulk emails queued before the worker starts
    bulk_transactional: int  # (d): transactional emails sent while it drains, one every 100 ms
    bulk_slow: int  # (g): recipients sent through the slow server


MODES = {
    "quick": Sizes(loopback=2000, slow_ours=300, slow_baseline=60, api_requests=1000, api_warmup=100,
                   api_concurrency=16, bulk=2000, bulk_backlog=2000, bulk_transactional=30, bulk_slow=1000),
    "full": Sizes(loopback=10000, slow_ours=1500, slow_baseline=300, api_requests=5000, api_warmup=300,
                  api_concurrency=16, bulk=20000, bulk_backlog=10000, bulk_transactional=100, bulk_slow=5000),
}  # fmt: skip
SYSTEMS = ("baseline", "ours")
TRANSACTIONAL_INTERVAL = 0.1  # seconds between (d)'s transactional emails


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="the default")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "latest.json", help="where to write results"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(scenario.key for scenario in SCENARIOS),
        help="which of " + ", ".join(f"{scenario.key} ({scenario.help})" for scenario in SCENARIOS),
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the run's folder of process logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record our first worker with py-spy in (a), (b), (c) and (g), and print where its CPU goes",
    )
    parser.set_defaults(mode="quick")
    return parser.parse_args(argv)


Profiles = Callable[[str], Path | None]  # scenario key -> where py-spy writes (None: no profile)


@dataclass(frozen=True)
class Scenario:
    """One scenario: its key, what --scenarios says of it, and how it runs (results by system)."""

    key: str
    help: str
    run: Callable[[Stack, Sizes, Profiles], dict[str, Any]]


def _limit_connections() -> int:
    # As many as our workers may hold at once: SMTP_MAX_CONNECTIONS per process.
    from neoforge.settings import get_settings
    from tasks.siblings import process_count

    settings = get_settings()
    return settings.smtp_max_connections * process_count(settings)


def _run_a(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {
        "baseline": drain(stack, "baseline", sizes.loopback),
        "ours": drain(
            stack, "ours", sizes.loopback, profile=raw("a"), limit_connections=_limit_connections()
        ),
    }


def _run_b(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {
        "baseline": drain(stack, "baseline", sizes.slow_baseline, SLOW_REPLY_DELAY),
        "ours": drain(stack, "ours", sizes.slow_ours, SLOW_REPLY_DELAY, profile=raw("b"),
                      limit_connections=_limit_connections()),
    }  # fmt: skip


def _run_c(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {
        "baseline": drain(stack, "baseline", sizes.bulk),
        "ours": bulk_drain(stack, sizes.bulk, profile=raw("c")),
    }


def _run_g(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {
        "baseline": drain(stack, "baseline", sizes.slow_baseline, SLOW_REPLY_DELAY),
        "ours": bulk_drain(stack, sizes.bulk_slow, SLOW_REPLY_DELAY, profile=raw("g")),
    }


def _run_d(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {
        "ours": latency_under_backlog(
            stack, sizes.bulk_backlog, sizes.bulk_transactional, TRANSACTIONAL_INTERVAL
        )
    }


def _run_e(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {
        system: post_emails(stack, system, sizes.api_requests, sizes.api_concurrency, sizes.api_warmup)
        for system in SYSTEMS
    }


def _run_h(stack: Stack, sizes: Sizes, raw: Profiles) -> dict[str, Any]:
    return {"ours": probes_during_bulk(stack)}


# In the order they run. A new scenario: append one here (and its rows in _rows).
SCENARIOS = [
    Scenario("a", "loopback; gives f too", _run_a),
    Scenario("b", "slow server", _run_b),
    Scenario("c", "bulk", _run_c),
    Scenario("g", "bulk, slow server", _run_g),
    Scenario("d", "latency under bulk", _run_d),
    Scenario("e", "API", _run_e),
    Scenario("h", "API during a 10,000-recipient bulk call", _run_h),
]


def _scenarios(
    stack: Stack, sizes: Sizes, wanted: set[str], profiles: Path | None
) -> dict[str, dict[str, Any]]:
    def raw(key: str) -> Path | None:
        return profiles / f"profile-{key}-ours.txt" if profiles is not None else None

    return {scenario.key: scenario.run(stack, sizes, raw) for scenario in SCENARIOS if scenario.key in wanted}


def _drain_rows(key: str, label: str, runs: dict[str, DrainResult], digits: int = 1) -> list[Row]:
    """A drain's two rows: LABEL's rate from worker start, and the steady rate of the same run."""
    return [
        Row(label, runs["baseline"].rate, runs["ours"].rate, digits=digits,
            cpu=cpu_cell({s: r.cpu for s, r in runs.items()})),
        Row(f"({key}) same run, steady rate: 1st → last delivery", runs["baseline"].steady_rate,
            runs["ours"].steady_rate, digits=digits, cpu="(same run)"),
    ]  # fmt: skip


def _rows(results: dict[str, dict[str, Any]], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    slow = f"{SLOW_REPLY_DELAY * 1000:.0f} ms per SMTP reply: emails/s, worker start → last delivery"
    if "a" in results:
        label = f"(a) loopback smtp-sink: emails/s, worker start → {sizes.loopback}th delivery"
        rows += _drain_rows("a", label, results["a"])
    if "b" in results:
        label = f"(b) {slow} (N={sizes.slow_baseline} baseline, {sizes.slow_ours} ours)"
        rows += _drain_rows("b", label, results["b"], digits=2)
    if "c" in results:
        c: dict[str, DrainResult] = results["c"]
        n = sizes.bulk
        calls = -(-n // BULK_CHUNK)
        rows.append(
            Row(f"(c) bulk, {n} recipients: enqueue, recipients/s (ours: queue_bulk, {calls} call(s); "
                "baseline: one .delay() each)", c["baseline"].enqueue_rate, c["ours"].enqueue_rate,
                cpu="(bench process)")
        )  # fmt: skip
        rows += _drain_rows("c", f"(c) same run: drain, emails/s, worker start → {n}th delivery", c)
    else:
        rows.append(Row("(c) bulk send", note="not run (--scenarios)"))
    if "g" in results:
        label = (
            f"(g) bulk, {slow} (baseline: N={sizes.slow_baseline}, one .delay() each; ours: "
            f"{sizes.bulk_slow} recipients, queue_bulk)"
        )
        rows += _drain_rows("g", label, results["g"], digits=2)
    if "d" in results:
        d: LatencyResult = results["d"]["ours"]
        label = (
            f"(d) {d.emails} transactional emails, one every {d.interval * 1000:.0f} ms, behind a "
            f"{d.backlog}-email bulk backlog: enqueue → sent"
        )
        no_baseline = "no baseline: the typical task has no priority queues"
        cpu = cpu_cell({"ours": d.cpu})
        rows += [
            Row(f"{label}, p50 ms (lower is better)", ours=d.p50_ms, note=no_baseline, cpu=cpu),
            Row(f"{label}, p99 ms (lower is better)", ours=d.p99_ms,
                note=f"{no_baseline} (max {d.max_ms:,.1f} ms)", cpu="(same run)"),
        ]  # fmt: skip
    else:
        rows.append(Row("(d) transactional latency under a bulk backlog", note="not run (--scenarios)"))
    if "e" in results:
        e: dict[str, ApiResult] = results["e"]
        label = f"(e) POST /emails, {sizes.api_concurrency} concurrent clients, {sizes.api_requests} requests"
        rows += [
            Row(f"{label}: requests/s", e["baseline"].rate, e["ours"].rate,
                cpu=cpu_cell({s: r.cpu for s, r in e.items()})),
            Row("(e) same run: p50 latency, ms (lower is better)", e["baseline"].p50_ms, e["ours"].p50_ms,
                digits=2, cpu="(same run)"),
            Row("(e) same run: p99 latency, ms (lower is better)", e["baseline"].p99_ms, e["ours"].p99_ms,
                digits=2, cpu="(same run)"),
        ]  # fmt: skip
    else:
        rows.append(Row("(e) POST /emails", note="not run (--scenarios)"))
    if "h" in results:
        rows += bulk_api_rows(results["h"]["ours"])
    if "a" in results:
        a: dict[str, DrainResult] = results["a"]
        n = sizes.loopback
        rows += [
            Row(f"(f) Redis bytes per queued email, {n} queued, no worker (lower is better)",
                a["baseline"].redis_bytes_per_email, a["ours"].redis_bytes_per_email, digits=0,
                cpu="(measured before (a)'s worker starts)"),
            Row("enqueue from app code: .delay() calls/s, one thread", a["baseline"].enqueue_rate,
                a["ours"].enqueue_rate, cpu="(bench process)"),
        ]  # fmt: skip
    return rows


def _profiles(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for key in ("a", "b", "c", "g"):
        profile = getattr(results.get(key, {}).get("ours"), "profile", None)
        if profile is not None:
            summary = Profile(**profile)
            lines += [f"({key}) {line}" for line in summary.lines()]
    return lines


def _sink_limits(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for key, label in (
        ("a", "loopback smtp-sink"),
        ("b", f"smtp-sink behind {SLOW_REPLY_DELAY * 1000:.0f} ms per reply"),
    ):
        limit = getattr(results.get(key, {}).get("ours"), "sink_limit", None)
        if limit is not None:
            how = "MAIL, RCPT and DATA pipelined" if limit["pipelining"] else "no PIPELINING offered"
            lines.append(
                f"({key}) {label}: {limit['rate']:,.0f} messages/s over {limit['connections']} connections "
                f"({how}; {limit['messages']} in {limit['seconds']} s, set-up included)"
            )
    return lines


def _notes(results: dict[str, dict[str, Any]]) -> list[str]:
    notes = []
    drains = {key: results[key] for key in ("a", "b", "c", "g") if key in results}
    if drains:
        boots = ", ".join(
            f"({key}) {s} {r.first_delivery_after:.1f} s"
            for key, runs in drains.items()
            for s, r in runs.items()
        )
        notes.append(
            "'worker start → last delivery' includes the worker's start-up (first delivery after: "
            f"{boots}); in (b) the baseline has fewer emails, so start-up weighs more in its figure: "
            "the steady-rate row compares like with like."
        )
        extra = ", ".join(
            f"({key}) {s} {r.extra_deliveries}" for key, runs in drains.items() for s, r in runs.items()
        )
        notes.append(f"Deliveries beyond N at the sink after the worker stopped (duplicates): {extra}.")
    notes.append(
        "Each system runs as its documentation tells users to. Ours: one `celery -A tasks worker`, as the "
        "README says, default settings (it starts one threads-pool process per CPU, 32 threads each, INFO "
        "logs to a file, results stored, late ack, prefetch 1 per thread, at most 50 SMTP connections per "
        "process). The baseline: bench/baseline.py, `celery -A bench.baseline worker`, Celery's default "
        "(prefork, a pool process per CPU, early ack, prefetch 4, results ignored; ConnectionConfig built "
        "once at import as fastapi-mail's documentation does, one SMTP connection and asyncio.run per "
        "email). Same Redis server. No Flower runs, so neither system sends task events (a running "
        "Flower turns ours on)."
    )
    if "c" in results:
        notes.append(
            "(c): ours renders templates/test_email (text+HTML with the base layout, 1.8 KB of template "
            "source) for "
            "each recipient in the worker; the baseline sends bench/emails.py's ~2 KB email with one "
            ".delay() per recipient (the machinery of (a), same N as ours). Redis bytes per queued email, "
            "(c): baseline "
            f"{results['c']['baseline'].redis_bytes_per_email:,.0f}, ours "
            f"{results['c']['ours'].redis_bytes_per_email:,.0f} (batch record included)."
        )
    if "d" in results:
        d = results["d"]["ours"]
        notes.append(
            "(d): smtp-sink runs with -c (it counts messages, keeps no content), so a message cannot be "
            "matched at the sink; each latency is our status record's sent_at (written by the worker once "
            "the server accepted the message) minus its created_ts (written at enqueue), from Redis "
            "neoforge:email:{id}. Transactional emails start once the worker has made its first delivery "
            f"({d.first_delivery_after:.1f} s after its start); emails not yet at the sink when the last "
            f"transactional one was queued: {d.backlog_left_at_last_send}, once all were sent: "
            f"{d.backlog_left_at_end} (0 would mean the backlog had run out). No baseline: the typical task "
            "has one queue, so a transactional email waits behind the whole backlog."
        )
    if "e" in results:
        notes.append(
            "(e): one uvicorn process per CPU each (ours: `neoforge serve`, the README's command), "
            "--no-access-log, no worker running; ours with "
            "API_RATE_LIMIT_REQUESTS/RECIPIENTS raised so its per-key limiter (600/min by default) never "
            "answers 429 (its Redis calls still run). The client runs in the bench process ('bench' CPU)."
        )
    return notes


def _machine(stack: Stack) -> dict[str, Any]:
    client = stack.redis()
    redis_version = client.info("server")["redis_version"]
    client.close()
    return {
        "cpus": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "redis_server": redis_version,
        **{name: version(name) for name in ("celery", "kombu", "fastapi-mail", "aiosmtplib", "uvicorn")},
    }


def _source() -> dict[str, Any]:
    """The commit measured and the files changed since it (read only: no index refresh, no lock)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else ""

    # Porcelain lines are "XY path": the status letters may start with a space.
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted_changes": changed}


def _terminate(signum: int, _: FrameType | None) -> None:
    # Turn SIGTERM into an exception so that every process we started is stopped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table, write the JSON; 0 on success."""
    args = _parse(argv)
    sizes = MODES[args.mode]
    wanted = {name.strip() for name in args.scenarios.split(",") if name.strip()}
    signal.signal(signal.SIGTERM, _terminate)
    started, started_at = time.monotonic(), datetime.now(UTC)
    stack = Stack.create(ensure_smtp_sink())
    finished = False
    try:
        stack.start_redis()
        stack.configure_this_process()
        machine = _machine(stack)
        source = _source()
        results = _scenarios(stack, sizes, wanted, args.json.parent if args.profile else None)
        finished = True
    finally:
        stack.close()
        if finished and not args.keep_logs:
            stack.remove_folder()
        else:
            print(f"bench: logs kept in {stack.folder}", file=sys.stderr)
    rows = _rows(results, sizes)
    limits = [
        line
        for key, label in (
            ("a", "(a) loopback"),
            ("b", "(b) slow server"),
            ("c", "(c) bulk drain"),
            ("g", "(g) bulk, slow server"),
            ("d", "(d) transactional under bulk"),
            ("e", "(e) API"),
        )
        if key in results
        for line in bottlenecks(label, {s: r.cpu for s, r in results[key].items()})
    ]
    duration = time.monotonic() - started
    print(render_table(rows))
    print()
    print("What limited the figures (CPU seconds / wall seconds; 'bench' is this process, 'other' the rest")
    print("of the machine):")
    for line in limits:
        print(f"- {line}")
    sink_limits = _sink_limits(results)
    if sink_limits:
        print("\nThe SMTP server's own limit in this run (bench/sinklimit.py: a bare client, the bench email")
        print("back to back over reused connections, measured right before our drain; (c) and (g) use the")
        print("same servers as (a) and (b)):")
        for line in sink_limits:
            print(f"- {line}")
    profiles = _profiles(results)
    if profiles:
        print("\nWhere our first worker's CPU went (py-spy --gil, a few seconds from its first delivery):")
        for line in profiles:
            print(f"- {line}")
    notes = _notes(results)
    print("\nNotes:")
    for line in notes:
        print(f"- {line}")
    dirty = " + uncommitted changes" if source["uncommitted_changes"] else ""
    print(
        f"\n{args.mode} mode, {duration:.0f} s, commit {source['commit'][:10]}{dirty}; results in {args.json}"
    )
    write_json(
        args.json,
        {
            "mode": args.mode,
            "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
            "started_at": started_at.isoformat(timespec="seconds"),
            "duration_seconds": round(duration, 1),
            "source": source,
            "machine": machine | {"loadavg_after": Path("/proc/loadavg").read_text().split()[:3]},
            "sizes": asdict(sizes),
            "slow_reply_delay_seconds": SLOW_REPLY_DELAY,
            "results": {key: {s: r.as_dict() for s, r in runs.items()} for key, runs in results.items()},
            "table": [asdict(row) for row in rows],
            "limits": limits,
            "sink_limits": sink_limits,
            "profiles": profiles,
            "notes": notes,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
