"""How a rank ends: every run ends, none outlives its launcher, none leaves state for the next one.

Three small units, used by :class:`trainer.run.Trainer`:

* :class:`ExitDeadline` - once a rank has written its results (or its stop checkpoint), it must
  exit within ``seconds``. Past that, :mod:`faulthandler`'s watchdog thread (C code: it runs even
  when the interpreter is stuck holding the GIL, and through interpreter shutdown) writes every
  thread's Python stack to stderr - the rank's log - and ends the process with exit code 1. A hang
  is then a failure with stacks in the log, never a job that holds its nodes until the time limit.
* :class:`LauncherWatch` - a rank started by ``torchrun`` leads its own session, so killing the
  launcher (or its process group) does not reach it; a rank of ``deepspeed`` is a grandchild of
  the ``deepspeed`` runner. This thread checks once a second that the launcher processes still
  exist (the rank's parent, and the runner above ``deepspeed.launcher.launch``); when one is gone it
  calls ``on_exit`` (the trainer then saves at the next step boundary and exits) and arms an
  :class:`ExitDeadline`, so the rank is gone within ``grace_s`` even if its peers are dead.
* :func:`release_shm_names` - DeepSpeed's CPU communication op maps one shared-memory file per rank,
  ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``, and never
  unlinks it: every run left 2 x 69 MB behind, and a later run on the same port (a requeued Slurm
  job) opened the dead run's files. Once every rank has mapped every peer's file (the op's init
  waits for that, and a barrier follows), the names are unlinked: the mappings stay valid, nothing
  is left to a later run even after SIGKILL.

Decode workers (``data.loader``) are started with ``spawn`` and get SIGKILL when their rank dies
(``PR_SET_PDEATHSIG``), so a rank that is killed takes its workers with it.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable

from s5video.trainer.compat import ds_shm_buffer_name

log = logging.getLogger("s5video.lifecycle")

SHM_DIR = Path("/dev/shm")


class ExitDeadline:
    """Exit with code 1 and every thread's stack in the log if the process still lives ``seconds``
    after :meth:`arm` (faulthandler's ``dump_traceback_later``; one deadline per process, re-arming
    replaces it)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.armed_for: str | None = None

    def arm(self, seconds: float, why: str, announce: bool = False) -> None:
        """Start (or restart) the countdown: ``seconds`` from now the process writes ``Timeout`` and
        every thread's stack to the stream and exits 1. ``announce`` also says so now (else a debug log)."""
        self.armed_for = why
        msg = f"exit deadline: {why}; exiting within {seconds:.0f} s, else thread stacks follow and exit code 1"
        if announce:
            print(f"[s5video] {msg}", file=self.stream, flush=True)
        log.debug(msg)
        faulthandler.dump_traceback_later(seconds, exit=True, file=self.stream)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid`` from /proc/<pid>/stat; None if the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)"
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _parent_of(pid: int) -> int | None:
    st = proc_stat(pid)
    return st[1] if st else None


def _is_zombie(pid: int) -> bool:
    """True for a zombie (exited, not reaped yet) and for a process that is gone."""
    st = proc_stat(pid)
    return st is None or st[0] == "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def launcher_chain() -> list[tuple[int, int]]:
    """The launcher processes above this process as ``(pid, its parent)`` pairs: the parent; and when
    the parent is ``deepspeed.launcher.launch``, also the ``deepspeed`` runner above it. Empty when
    the parent is init (nothing to watch)."""
    parent = _parent_of(os.getpid())
    if parent is None or parent <= 1:
        return []
    grand = _parent_of(parent)
    chain = [(parent, grand)]
    if grand and grand > 1 and "deepspeed.launcher.launch" in _cmdline(parent):
        chain.append((grand, _parent_of(grand)))
    return chain


class LauncherWatch(threading.Thread):
    """Daemon thread: when a launcher process of this rank is gone, log it, arm an exit deadline of
    ``grace_s`` seconds and call ``on_exit()`` once (see the module docstring).

    A process is gone when it no longer exists, is a zombie (killed, not yet reaped by its own
    parent - e.g. a test or shell still reading the run's output) or its own parent changed (it was
    re-parented, or the pid was reused by an unrelated process)."""

    def __init__(self, on_exit: Callable[[], None], grace_s: float = 45.0, interval_s: float = 1.0,
                 deadline: ExitDeadline | None = None):
        super().__init__(name="s5video-launcher-watch", daemon=True)
        self.chain = launcher_chain()
        self.on_exit, self.grace_s, self.interval_s = on_exit, grace_s, interval_s
        self.deadline = deadline or ExitDeadline()
        self._stop_event = threading.Event()

    def gone(self) -> int | None:
        """The first launcher pid of the chain that is gone (exited - a zombie its own parent has not
        reaped yet counts - or re-parented), else None."""
        if self.chain and (os.getppid() != self.chain[0][0] or _is_zombie(self.chain[0][0])):
            return self.chain[0][0]
        for pid, parent in self.chain[1:]:
            if _parent_of(pid) != parent or _is_zombie(pid):
                return pid
        return None

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            pid = self.gone()
            if pid is not None:
                print(f"[s5video] launcher process {pid} exited: saving a checkpoint at the next step boundary, "
                      "then exiting", file=sys.stderr, flush=True)
                self.deadline.arm(self.grace_s, "launcher exited", announce=True)
                self.on_exit()
                return

    def stop(self) -> None:
        self._stop_event.set()


def shm_buffer_name(rank: int, addr: str | None = None, port: str | None = None) -> str:
    """Name of DeepSpeed's CPU all-reduce buffer of ``rank`` (``deepspeed/ops/csrc/cpu/comm/shm.cpp``:
    ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``)."""
    addr = os.environ.get("MASTER_ADDR", "") if addr is None else addr
    port = os.environ.get("MASTER_PORT", "") if port is None else port
    return ds_shm_buffer_name(rank, addr, port)


def release_shm_names(rank: int) -> bool:
    """Unlink this rank's DeepSpeed shared-memory name (call after a barrier that follows process-group
    init, when every peer has mapped it). Returns True when a file was removed."""
    try:
        (SHM_DIR / shm_buffer_name(rank)).unlink()
        return True
    except FileNotFoundError:
        return False
