"""One ``celery -A tasks worker`` uses every core: a threads-pool worker starts its sibling processes.

A threads-pool process runs Python on one core at a time (the GIL), however
many emails it has in flight, so the command a user types starts
WORKER_PROCESSES of them (default: one per CPU this process may run on). The
process the user started is the first; when Celery initialises it (the
command-line worker only, not a worker built in code), it starts the others
with its own command line, a node name of their own (``NAME-2@HOST``, ...) and
``NEOFORGE_WORKER_SIBLING`` set, so that they start none themselves.

They stay in its process group (a signal to the group, Ctrl-C in a terminal,
reaches all), get SIGTERM from the kernel if it dies, however it dies
(PR_SET_PDEATHSIG), and its shutdown (warm or cold, as ``docker stop`` sends it
to the first process only) is passed on to them and waited for: the command
ends when every process has finished its tasks.
Each sibling is an ordinary Celery worker: its own broker connection, its
own prefetch, its own late acks, so every guarantee holds per process as it
does for workers on several hosts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from celery.apps.worker import Worker
from celery.concurrency import get_implementation
from celery.concurrency.thread import TaskPool
from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down
from celery.utils.nodenames import nodename, nodesplit

from neoforge.children import set_parent_death_signal
from neoforge.logs import log_event
from neoforge.settings import Settings, get_settings

__all__ = ["SIBLING_VARIABLE", "connect", "process_count"]

logger = logging.getLogger(__name__)

SIBLING_VARIABLE = "NEOFORGE_WORKER_SIBLING"  # set in the processes started here: their number
_STOP_WAIT = 5.0  # seconds past the soft-shutdown timeout before a sibling is killed

_siblings: list[subprocess.Popen[bytes]] = []


def process_count(settings: Settings) -> int:
    """Processes one ``celery -A tasks worker`` runs: WORKER_PROCESSES, else one per usable CPU.

    Only the threads pool starts siblings: prefork has its own processes, and
    solo is one on purpose.
    """
    if settings.worker_pool != "threads":
        return 1
    if settings.worker_processes is not None:
        return settings.worker_processes
    return max(1, len(os.sched_getaffinity(0)))


def _sibling_name(hostname: str, number: int) -> str:
    name, host = nodesplit(hostname)
    return str(nodename(f"{name or 'celery'}-{number}", host))


def _start_siblings(sender: Any = None, **_: Any) -> None:
    if not isinstance(sender, Worker) or os.environ.get(SIBLING_VARIABLE):
        return  # a worker built in code (tests, the embedded worker), or a sibling itself
    if get_implementation(sender.pool_cls) is not TaskPool:
        return
    count = process_count(get_settings())
    for number in range(2, count + 1):
        name = _sibling_name(sender.hostname, number)
        # The same command line; a later --hostname wins over an earlier one.
        command = [sys.executable, "-m", "celery", *sys.argv[1:], "--hostname", name]
        _siblings.append(
            subprocess.Popen(
                command,
                env={**os.environ, SIBLING_VARIABLE: str(number)},
                stdin=subprocess.DEVNULL,
                preexec_fn=set_parent_death_signal,  # prctl only
            )
        )


def _say_so(**_: Any) -> None:
    # Logged once the worker's logging is set up (after worker_init).
    if _siblings:
        pids = ",".join(str(process.pid) for process in _siblings)
        log_event(logger, "worker.siblings", processes=len(_siblings) + 1, pids=pids)


def _pass_on(how: str = "Warm", **_: Any) -> None:
    # The command's shutdown is its processes' shutdown, started at once in
    # each. Warm is SIGTERM (a second one changes nothing, so a signal to the
    # whole group, which they also get, does no harm); cold is SIGQUIT.
    sig = signal.SIGQUIT if how == "Cold" else signal.SIGTERM
    for process in _siblings:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def _wait_for_siblings(**_: Any) -> None:
    # The command ends when every process it started has finished its tasks.
    settings = get_settings()
    wait = settings.worker_soft_shutdown_timeout + settings.email_task_time_limit + _STOP_WAIT
    for process in _siblings:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # no-op if already stopping (a shutdown from code)
    for process in _siblings:
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _siblings.clear()


def connect() -> None:
    """Connect the handlers; after tasks/app.py's, so a worker that cannot reach Redis starts none."""
    worker_init.connect(_start_siblings)
    worker_ready.connect(_say_so)
    worker_shutting_down.connect(_pass_on)
    worker_shutdown.connect(_wait_for_siblings)
