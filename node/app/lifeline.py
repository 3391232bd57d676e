"""The lifeline: a daemon started by a supervisor (`blyan devnet`, a test) stops when it dies.

The supervisor makes a pipe, keeps its write end and hands the read end to each daemon it starts
(inherited fd, its number in `BLYAN_LIFELINE_FD`). Nobody ever writes on it. When the supervisor
dies, however it dies (SIGKILL and a crash included), the kernel closes its write end, every
daemon's read end sees EOF, and the daemon stops as it does on SIGTERM: its services wind down
and its chains are closed.

Why a pipe as the mechanism, and not Linux's parent-death signal (prctl PR_SET_PDEATHSIG):

- a pipe is plain POSIX (macOS and the BSDs too); PR_SET_PDEATHSIG is Linux only;
- PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a
  node started from a worker thread would be killed when that thread ends;
- setting it means a `preexec_fn` between fork and exec (unsafe with threads, and it turns off
  subprocess's fast spawn path), and it races a parent that dies before the prctl runs; a pipe
  needs nothing in the child before exec, and an EOF that happened before the daemon looks is
  still there when it does (level-triggered, not a signal that can be missed);
- a signal is indistinguishable from an operator's `kill`, and a second one in the middle of a
  clean stop ends the daemon abruptly; the EOF is read once, by a task of the daemon, which logs
  why it stops.

What the parent-death signal would add is acting on a daemon whose event loop no longer runs;
for a clean stop that itself hangs, the daemon arms an alarm when its lifeline breaks (SIGALRM,
whose default action ends the process, after `ORPHAN_STOP_S`). The write end is not inheritable
(os.pipe) and subprocess closes other fds, so only the supervisor holds it; a process that
*forks* without exec would hold a copy, and its nodes then live as long as that copy.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, MutableMapping

import trio

logger = logging.getLogger(__name__)

LIFELINE_ENV = "BLYAN_LIFELINE_FD"
"""Environment variable naming the inherited read end of the lifeline in a daemon."""
ORPHAN_STOP_S = 30
"""Seconds an orphaned daemon has for its clean stop before SIGALRM ends it."""


class Lifeline:
    """The supervisor's side: a pipe whose write end only this process holds."""

    _of_process: Lifeline | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both non-inheritable: only pass_fds hands one on
        self._pid = os.getpid()

    @classmethod
    def of_this_process(cls) -> Lifeline:
        """One lifeline for this process's lifetime (a fresh one in a forked child)."""
        with cls._lock:
            if cls._of_process is None or cls._of_process._pid != os.getpid():
                cls._of_process = cls()
            return cls._of_process

    def child_env(self, env: MutableMapping[str, str] | None = None) -> dict[str, str]:
        """`env` (default: ours) with the lifeline's fd number, for a daemon to be started."""
        return {**(os.environ if env is None else env), LIFELINE_ENV: str(self.read_fd)}

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The fd a daemon must inherit (subprocess's `pass_fds`)."""
        return (self.read_fd,)

    def close(self) -> None:
        """Cut the lifeline: every daemon holding it stops."""
        for fd in (self.write_fd, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def take_lifeline_fd(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The lifeline this daemon inherited, if any; the variable is removed so that nothing this
    daemon starts mistakes the fd for its own."""
    environ = os.environ if environ is None else environ
    value = environ.pop(LIFELINE_ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        logger.warning("ignoring %s=%r: not an open file descriptor", LIFELINE_ENV, value)
        return None
    return fd


async def watch_lifeline(fd: int, on_broken: Callable[[], None]) -> None:
    """Wait until the lifeline's read end `fd` sees EOF (the supervisor is gone), then call
    `on_broken` once. Closes `fd` when done or cancelled."""
    os.set_blocking(fd, False)
    try:
        while True:  # each turn consumes data or ends: nobody writes, so the first read is EOF
            await trio.lowlevel.wait_readable(fd)
            try:
                if not os.read(fd, 4096):
                    break
            except BlockingIOError:
                continue
    finally:
        os.close(fd)
    on_broken()


def arm_orphan_alarm(seconds: int = ORPHAN_STOP_S) -> None:
    """End this process (SIGALRM, default action) if it is still running after `seconds`."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(seconds)
