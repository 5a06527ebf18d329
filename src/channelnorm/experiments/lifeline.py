"""Worker processes end when the process that started them dies.

A sweep's workers are spawned processes; when the main process is killed (kill -9, OOM killer)
nothing tells them, and they would idle on with their data set and model in memory. Two guards:
on Linux the kernel sends SIGKILL to the worker when its parent dies (``PR_SET_PDEATHSIG``); on
every platform a daemon thread notices that the parent changed (``os.getppid``) and exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1          # from <linux/prctl.h>
POLL_SECONDS = 0.5


def exit_with_parent(poll_seconds: float = POLL_SECONDS) -> None:
    """Call first thing in a worker process (a pool initializer): from then on the worker exits
    within about ``poll_seconds`` of its parent's death (at once on Linux)."""
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    if sys.platform.startswith("linux"):
        _kill_me_when_parent_dies()
    if os.getppid() != parent_pid:       # the parent died before the guard was set
        os._exit(1)
    threading.Thread(target=watch_parent, args=(parent_pid, poll_seconds), name="exit-with-parent",
                     daemon=True).start()


def _kill_me_when_parent_dies() -> None:
    # the death signal follows the parent *thread* that created this process: pool workers are
    # spawned from the sweep's thread, which lives as long as the pool does
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        error = ctypes.get_errno()       # the watcher thread still guards this process
        print(f"exit_with_parent: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}", file=sys.stderr)


def watch_parent(parent_pid: int, poll_seconds: float, getppid: Callable[[], int] = os.getppid,
                 exit: Callable[[int], object] = os._exit) -> None:
    """Wait until this process's parent is no longer ``parent_pid`` (it died and the process was
    re-parented), then ``exit(1)`` (os._exit: no cleanup that could wait on the dead parent)."""
    while getppid() == parent_pid:
        time.sleep(poll_seconds)
    exit(1)
