"""
Process groups are signalled only while their leader is unreaped (operator_engine/devcluster/processgroup.py).

A group is named by its leader's pid. Once the leader is reaped and its group
empty, the kernel may give that number to an unrelated new group leader, and a
late ``killpg`` would kill that group. The hazard itself cannot be forced in a
test (it needs the pid counter to wrap around onto a new session leader), so
these tests check the condition that rules it out, with real processes: every
``os.killpg`` of this test process is checked against the kernel at the moment
it is made (``waitid(WNOWAIT)`` on the group id must find an unreaped child of
ours, exited or not, whose pid the kernel cannot have reused), and every reap
(``os.waitpid``) is recorded, so the order "signal the group, then reap the
leader" is seen. The old code (asyncio subprocesses, ``Popen.poll``) fails the
check; a descendant left in the group is killed in every case.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from operator_engine.devcluster import EmbeddedCluster, ProcessRuntime
from operator_engine.devcluster.controlplane import ControlPlane, ControlPlaneError
from operator_engine.devcluster.processgroup import ProcessGroup

from .helpers import NS, assert_dead, process_job

#: The command line of the child each test leaves behind in a group.
SLEEPER = b"sleep\x00300\x00"


@dataclasses.dataclass
class GroupSignals:
    """The ``killpg`` calls and reaps of this process, in order, and the calls made for a reaped leader."""

    events: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    unsafe: list[str] = dataclasses.field(default_factory=list)
    #: The ``sleep`` children the tests leave in a group; killed at teardown if one outlived a failed test.
    children: list[int] = dataclasses.field(default_factory=list)

    def child(self, pid: int) -> int:
        self.children.append(pid)
        return pid

    def signalled_then_reaped(self, pid: int) -> bool:
        """Group ``pid`` was signalled at least once, and reaped once, after the last signal."""
        kills = [i for i, event in enumerate(self.events) if event == ("killpg", pid)]
        reaps = [i for i, event in enumerate(self.events) if event == ("reaped", pid)]
        return bool(kills) and len(reaps) == 1 and reaps[0] > kills[-1]


@pytest.fixture
def group_signals(monkeypatch: pytest.MonkeyPatch) -> Iterator[GroupSignals]:
    """Watches ``os.killpg`` and ``os.waitpid`` (the real calls run; the code under test is untouched)."""
    seen = GroupSignals()
    real_killpg, real_waitpid, real_kill = os.killpg, os.waitpid, os.kill

    def killpg(pgid: int, sig: int) -> None:
        try:
            # Raises ChildProcessError unless pgid is a child of ours that is not reaped yet.
            os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            seen.unsafe.append(f"killpg({pgid}, {sig}) after its leader was reaped")
            raise ProcessLookupError(pgid) from None  # not sent: the number may be another group's by now
        seen.events.append(("killpg", pgid))
        real_killpg(pgid, sig)

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        result = real_waitpid(pid, options)
        if result[0] > 0:
            seen.events.append(("reaped", result[0]))
        return result

    monkeypatch.setattr(os, "killpg", killpg)
    monkeypatch.setattr(os, "waitpid", waitpid)
    yield seen
    for pid in seen.children:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == SLEEPER:  # still our sleeper: not a reused pid
                real_kill(pid, signal.SIGKILL)
        except OSError:
            pass


def state(pid: int) -> str:
    """The process's state letter from /proc (``Z``: a zombie, exited and not reaped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][0]


async def written(path: Path, timeout: float = 60.0) -> None:
    """Until the file at ``path`` holds something (a pid the pod wrote)."""
    async with asyncio.timeout(timeout):
        while not (path.exists() and path.read_text().strip()):
            await asyncio.sleep(0.05)


async def test_the_group_of_an_exited_leader_is_killed_before_the_leader_is_reaped(
    group_signals: GroupSignals,
) -> None:
    group = ProcessGroup(["/bin/sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], stdout=subprocess.PIPE)
    assert group.popen.stdout is not None
    child = group_signals.child(int(group.popen.stdout.readline()))
    group.popen.stdout.close()

    assert await group.ended() == 0
    assert state(group.pid) == "Z", "the exited leader is left a zombie: its pid, the group id, stays reserved"
    assert os.getpgid(child) == group.pid, "the child it left behind is still in its group"
    group.signal_group(signal.SIGKILL)
    assert group.reap() == 0
    await assert_dead(child)

    assert group_signals.unsafe == []
    assert group_signals.signalled_then_reaped(group.pid), group_signals.events
    with pytest.raises(RuntimeError, match="reaped"):
        group.signal_group(signal.SIGKILL)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EmbeddedCluster]:
    async with EmbeddedCluster(namespace=NS, runtime=ProcessRuntime(tmp_path / "root", max_grace=1.0)) as running:
        yield running


def job_leaving_a_child(tmp_path: Path, name: str, then: str) -> tuple[dict[str, Any], Path, Path]:
    """A Job whose shell writes its pid (the pod's first process, after the exec) and a background sleeper's
    into files, then runs ``then``; the Job and the two files."""
    leader, child = tmp_path / f"{name}.leader", tmp_path / f"{name}.child"
    # ($$$$ is Kubernetes' escape of $$)
    script = f'echo $$$$ > "$LEADER"; sleep 300 >/dev/null 2>&1 & echo $! > "$CHILD"; {then}'
    env = [{"name": "LEADER", "value": str(leader)}, {"name": "CHILD", "value": str(child)}]
    return process_job(name, ["/bin/sh", "-c", script], env=env), leader, child


async def test_a_pod_that_exits_leaving_a_child_has_its_group_killed_before_it_is_reaped(
    cluster: EmbeddedCluster, tmp_path: Path, group_signals: GroupSignals
) -> None:
    job, leader, child = job_leaving_a_child(tmp_path, "leaves-a-child", "echo done")
    await cluster.create(job)
    succeeded = await cluster.wait_for(
        "job", "leaves-a-child", lambda j: j and (j.get("status") or {}).get("succeeded"), timeout=60
    )
    assert succeeded is not None
    pods = await cluster.list("pod", {"job-name": "leaves-a-child"})
    assert cluster.api.pod_logs[(NS, pods[0]["metadata"]["name"])] == "done\n"
    await assert_dead(group_signals.child(int(child.read_text())))
    assert group_signals.unsafe == []
    assert group_signals.signalled_then_reaped(int(leader.read_text())), group_signals.events


async def test_a_deleted_pod_is_killed_by_group_before_it_is_reaped(
    cluster: EmbeddedCluster, tmp_path: Path, group_signals: GroupSignals
) -> None:
    # The first process ignores SIGTERM (as a container's PID 1 without a handler): only the group's SIGKILL ends it.
    job, leader, child = job_leaving_a_child(tmp_path, "deleted", "wait")
    await cluster.create(job)
    await written(child)
    sleeper = group_signals.child(int(child.read_text()))
    await cluster.delete("job", "deleted")
    assert await cluster.runtime.wait_finished("deleted", timeout=60) is None
    await assert_dead(sleeper)
    assert group_signals.unsafe == []
    assert group_signals.signalled_then_reaped(int(leader.read_text())), group_signals.events


def fake_assets(folder: Path, etcd: str) -> Path:
    """A KUBEBUILDER_ASSETS-like folder whose ``etcd`` is the given shell script (the rest is never started)."""
    folder.mkdir()
    (folder / "etcd").write_text("#!/bin/sh\n" + etcd)
    (folder / "etcd").chmod(0o755)
    return folder


async def test_a_control_plane_process_that_exits_at_start_is_reaped_after_its_group_is_killed(
    tmp_path: Path, group_signals: GroupSignals
) -> None:
    """start() sees etcd exit (without reaping it), raises, and stop() kills what it left behind, then reaps it."""
    assets = fake_assets(
        tmp_path / "assets", "echo $$ > leader.pid; sleep 300 >/dev/null 2>&1 &\necho $! > child.pid; exit 3\n"
    )
    plane = ControlPlane(tmp_path / "plane", assets, audit=False)
    with pytest.raises(ControlPlaneError, match="etcd exited with code 3"):
        plane.start()
    assert plane.processes == {}
    await assert_dead(group_signals.child(int((plane.workdir / "child.pid").read_text())))
    assert group_signals.unsafe == []
    assert group_signals.signalled_then_reaped(int((plane.workdir / "leader.pid").read_text())), group_signals.events
