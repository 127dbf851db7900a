"""Child processes that end with their parent: Linux's PR_SET_PDEATHSIG, for any layer that starts one."""

from __future__ import annotations

import ctypes
import signal

__all__ = ["set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def set_parent_death_signal() -> None:
    """In the child before exec: the kernel sends SIGTERM when the parent dies, however it dies.

    (It follows the thread that starts the child: start it from one that lives.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
