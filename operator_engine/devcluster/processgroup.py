"""
:class:`ProcessGroup`: a child process that leads a process group of its own, which is signalled as a
group only while its leader has not been reaped.

Why. A process group is named by its leader's pid, and ``os.killpg(pid, sig)`` signals whatever group
carries that number now. Once the leader has been reaped (waited for) and the last member of its group
has gone, the kernel may give the number to a new process; if that one leads a group of its own (anything
that calls ``setsid``: a shell, a daemon, a test runner's worker), a late ``killpg`` kills that unrelated
group. With ``pid_max`` at 32768 a busy machine wraps around quickly. A leader that has exited but has
not been reaped is a zombie, and a zombie keeps its pid, and so the group id, reserved (POSIX: a process
group id is not reused while its lifetime lasts). Any other member left in the group reserves it too,
but nothing tells us whether one is left; the leader is the one member we hold. Hence the rules this
class keeps:

* The child starts in a new session (``start_new_session``): it leads its group, whose id is its pid.
* Only :meth:`ProcessGroup.reap` reaps the leader, and it runs last. Its end is awaited WITHOUT
  reaping it: a pidfd (Linux >= 5.3) becomes readable when the process exits, and
  ``waitid(..., WNOWAIT)`` reads the exit status while leaving the zombie in place. ``Popen.poll``,
  ``Popen.wait`` and ``Popen.send_signal`` are not used before then (each may reap), nor asyncio's
  subprocesses (their child watcher reaps the child the moment it exits).
* :meth:`ProcessGroup.signal_group` refuses to run once the leader is reaped.

Nothing else in this Python process may reap our children either: a ``waitpid(-1)`` (asyncio's old
``SafeChildWatcher``/``FastChildWatcher``, which nothing here installs) would break the guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ProcessGroup"]

#: Without a pidfd (not Linux, or a kernel before 5.3), the leader's end is polled this often.
POLL_INTERVAL = 0.05


def _pidfd(pid: int) -> int | None:
    """A pidfd for our unreaped child ``pid`` (race-free: its pid cannot be reused before we reap it), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    """Mark ``future`` done (a pidfd stays readable: the loop may call back again before it is removed)."""
    if not future.done():
        future.set_result(None)


class ProcessGroup:
    """
    ``argv`` started as the leader of a new process group (``subprocess.Popen`` arguments pass through).

    The group id is the leader's pid and stays ours until :meth:`reap`; see the module docstring for why
    the order (end awaited without reaping, group signalled, leader reaped last) matters.
    """

    def __init__(self, argv: Sequence[str | Path], **popen: Any) -> None:
        self.popen: subprocess.Popen[bytes] = subprocess.Popen(argv, start_new_session=True, **popen)
        self.pid = self.popen.pid
        self._pidfd = _pidfd(self.pid)

    @property
    def reaped(self) -> bool:
        """Whether the leader has been reaped: from then on its pid may name another process (group)."""
        return self.popen.returncode is not None

    def exit_status(self) -> int | None:
        """The leader's exit status as ``Popen.returncode`` gives it (-N: killed by signal N), None while it runs.

        Read with ``WNOWAIT``: an exited leader stays a zombie, so its group id stays reserved.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    async def ended(self) -> int:
        """Wait until the leader has exited (it is not reaped); its exit status."""
        loop = asyncio.get_running_loop()
        while (status := self.exit_status()) is None:
            if self._pidfd is None:
                await asyncio.sleep(POLL_INTERVAL)
                continue
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._pidfd, _resolve, readable)
            try:
                await readable
            finally:
                loop.remove_reader(self._pidfd)
        return status

    def ended_within(self, timeout: float | None) -> int | None:
        """Block until the leader has exited (it is not reaped) or ``timeout`` seconds passed; its status or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.exit_status()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self._pidfd is None:
                time.sleep(POLL_INTERVAL if left is None else min(POLL_INTERVAL, left))
                continue
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.poll(None if left is None else max(1, int(left * 1000)))
        return status

    def signal_leader(self, sig: int) -> None:
        """``sig`` to the leader alone (a container runtime's SIGTERM to PID 1); nothing once it is reaped."""
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """``sig`` to every process of the group: only while the leader is unreaped, so the group id is still ours."""
        if self.reaped:
            raise RuntimeError(f"process group {self.pid}: its leader has been reaped, so the id may be another's now")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> int:
        """Reap the leader (blocks until it has exited): the last step; the group may not be signalled after it."""
        returncode = self.popen.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return returncode

    async def reap_when_ended(self) -> int:
        """:meth:`reap`, once :meth:`ended` says it will not block."""
        await self.ended()
        return self.reap()
