"""A new leader acts on the watch events of workflows it first saw as a standby (README.md, Two replicas, one active).

A standby keeps its kopf watches and ignores their events. kopf gives each
object a shallow copy of the operator's memo, made when it first sees the
object: the engine a replica starts on taking the Lease must reach the copies
made while it stood by, or the new leader ignores every event of the objects it
saw before (operator_main.py keeps the engine in `memo.live`, shared by all
copies). The backstop would hide that by reconciling everything anyway, so
here it is an hour: within the deadlines below only events move a workflow.

Two operator processes run with leader election. While the first leads, a
workflow reaches its algorithm stage and its algorithm Job is held running,
so the second sees the workflow and that Job as a standby. The leader is
killed; once the second has taken over, a new workflow is created and the held
Job is let end: the new leader must carry both to Succeeded on events alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import ProcessFactory, Receiver, TimedRuntime
from helpers import (
    NS,
    Replicas,
    child_names,
    creation_posts,
    make_workflow,
    posted_name,
    status,
    wait_code,
    wait_readiness,
    wait_terminal,
    wait_until,
    wait_until_clean,
    watch_started_since,
)

from operator_engine.devcluster import EmbeddedCluster
from operator_engine.leader import LEASE_NAME

BACKSTOP_SECONDS = 3600  # longer than the test: no backstop pass runs while it does
SEEN = "wf-seen-as-standby"  # created while the first operator leads
NEW = "wf-after-takeover"  # created once the second has taken over
HELD_JOB = child_names(SEEN)["algorithm"]
RUNNING_ALGORITHM = 40  # statusCode (docs/contract.md)
DEADLINE = 180.0  # generous for a loaded machine, and far below the backstop


class GatedRuntime(TimedRuntime):
    """A TimedRuntime whose pods of a held Job keep running until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}

    def hold(self, job_name: str) -> None:
        self.gates[job_name] = asyncio.Event()

    def release(self, job_name: str) -> None:
        self.gates[job_name].set()

    async def run(self, pod: dict[str, Any], job: dict[str, Any]) -> Any:
        gate = self.gates.get(job["metadata"]["name"])
        if gate is not None:
            await gate.wait()  # cancelled like any pod when its Job is deleted
        return await super().run(pod, job)


@pytest.fixture
async def cluster() -> AsyncIterator[EmbeddedCluster]:
    """The embedded cluster of conftest.py, with a runtime that can hold a Job running."""
    async with EmbeddedCluster(namespace=NS, runtime=GatedRuntime()) as running:
        yield running


def job_created_by(cluster: EmbeddedCluster, job_name: str) -> set[str]:
    """Which operators created the Job, told apart by the holder identity in their User-Agent."""
    posts = [r for r in creation_posts(cluster, "jobs") if posted_name(r) == job_name]
    return {who for who in ("operator-a", "operator-b") for r in posts if f"({who})" in r.user_agent}


async def test_a_new_leader_moves_workflows_it_first_saw_as_a_standby_on_events_alone(
    operator_process: ProcessFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    assert isinstance(runtime, GatedRuntime)
    runtime.hold(HELD_JOB)
    replicas = Replicas(operator_process, OPERATOR_BACKSTOP_SECONDS=str(BACKSTOP_SECONDS))
    urls, start = replicas.urls, replicas.start

    first = await start("a")
    await wait_readiness(urls["a"], 200)
    before_standby = len(cluster.request_log)
    second = await start("b")
    await wait_readiness(urls["b"], 503)
    # The standby watches Jobs before the Job below exists, so kopf makes that Job's memo copy while
    # it stands by. (kopf's own requests do not name their replica: a Jobs watch opened since the
    # standby started is the standby's, the leader's is older.)
    await wait_until(lambda: watch_started_since(cluster, before_standby, "jobs"), what="the standby watching Jobs")

    # The leader takes the first workflow to its algorithm stage; the algorithm pod is held running.
    await cluster.create(make_workflow(SEEN))
    await wait_code(cluster, SEEN, RUNNING_ALGORITHM, timeout=DEADLINE, context=lambda: first.log()[-3000:])
    await wait_until(lambda: HELD_JOB in runtime.start_times, timeout=DEADLINE, what=f"the pod of {HELD_JOB}")
    await receiver.wait("/start", SEEN, timeout=DEADLINE)  # delivered by the leader, none left to cut off
    assert job_created_by(cluster, HELD_JOB) == {"operator-a"}

    first.kill()
    await wait_readiness(urls["b"], 200, timeout=DEADLINE)  # took the Lease, swept, now acts
    lease = cluster.api.get(cluster.spec("leases"), cluster.namespace, LEASE_NAME)
    assert lease["spec"]["holderIdentity"] == "operator-b", lease
    # The new leader's sweep left the held workflow where it was: the Job it waits for has not ended.
    assert status(await cluster.get("wf", SEEN)).get("statusCode") == RUNNING_ALGORITHM

    await cluster.create(make_workflow(NEW))
    runtime.release(HELD_JOB)

    for name in (SEEN, NEW):
        final = await wait_terminal(cluster, name, timeout=DEADLINE, context=lambda: second.log()[-3000:])
        assert status(final).get("phase") == "Succeeded", (name, status(final))
        await receiver.wait("/stop", name, timeout=DEADLINE)
        await wait_until_clean(cluster, name, timeout=DEADLINE)
    # The held workflow's last stage was started by the new leader, after its algorithm Job ended.
    assert job_created_by(cluster, child_names(SEEN)["publish"]) == {"operator-b"}
    assert job_created_by(cluster, child_names(NEW)["configure"]) == {"operator-b"}
