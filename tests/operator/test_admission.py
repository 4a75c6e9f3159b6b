"""maxJobs: at most N workflows admitted at once, the rest Queued, admitted in creation order."""

from __future__ import annotations

import json

from conftest import History, OperatorFactory, ProcessFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    assert_notified_once,
    deliveries_cut_off,
    make_workflow,
    status,
    wait_code,
    wait_terminal,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome

NAMES = [f"wf-{i}" for i in range(6)]


def script_slow_algorithms(runtime: TimedRuntime, duration: float) -> None:
    runtime.script("*-algorithm-job", Outcome(duration=duration))
    runtime.script("*-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))


async def create_in_order(cluster: EmbeddedCluster, names: list[str]) -> None:
    for name in names:  # name order = creation order, whatever the second-precision timestamps
        await cluster.create(make_workflow(name))


async def check_all_succeeded(cluster: EmbeddedCluster, names: list[str], context=None) -> None:
    for name in names:
        final = status(await wait_terminal(cluster, name, timeout=120, context=context))
        assert final["phase"] == "Succeeded", (name, final)
        assert final["statusCode"] == 70, (name, final)


async def test_max_jobs_never_admits_more_than_the_limit(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    script_slow_algorithms(runtime, 0.5)
    async with operator(maxJobs="2"):
        await create_in_order(cluster, NAMES)
        await check_all_succeeded(cluster, NAMES)
    await history.sync()
    most, moment = history.max_admitted()
    assert most == 2, f"{most} admitted at once ({moment}); the limit is 2 and 6 were waiting"


async def test_max_jobs_queues_the_rest_with_code_1(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    script_slow_algorithms(runtime, 0.5)
    async with operator(maxJobs="2"):
        await create_in_order(cluster, NAMES)
        await check_all_succeeded(cluster, NAMES)
    await history.sync()
    for name in NAMES[2:]:
        queued = [status(c.object) for c in history.workflow_states(name) if status(c.object).get("phase") == "Queued"]
        assert queued, f"{name} was never Queued: phases {history.phases(name)}"
        assert all(s.get("statusCode") == 1 for s in queued), queued


async def test_max_jobs_admits_in_creation_order(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    script_slow_algorithms(runtime, 0.5)
    async with operator(maxJobs="2"):
        await create_in_order(cluster, NAMES)
        await check_all_succeeded(cluster, NAMES)
    await history.sync()
    assert history.admission_order() == NAMES


async def test_max_jobs_limit_holds_across_a_hard_restart(
    operator_process: ProcessFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    history: History,
    receiver: Receiver,
) -> None:
    script_slow_algorithms(runtime, 1.0)
    proc = await operator_process(maxJobs="2", OPERATOR_BACKSTOP_SECONDS="2")
    await create_in_order(cluster, NAMES)
    # Kill it in the middle: once the third workflow has been admitted.
    await wait_code(cluster, "wf-2", 10, timeout=120, context=lambda: proc.log()[-3000:])
    proc.kill()
    cut_off = await deliveries_cut_off(cluster, receiver, NAMES)
    await proc.start()
    await check_all_succeeded(cluster, NAMES, context=lambda: proc.log()[-3000:])
    for name in NAMES:
        await receiver.wait("/stop", name)
    await history.sync()
    most, moment = history.max_admitted()
    assert most <= 2, f"{most} admitted at once ({moment}) across the restart; the limit is 2"
    assert history.admission_order() == NAMES, (
        f"admitted in order {history.admission_order()}; codes: {[(n, history.codes(n)) for n in NAMES]}"
    )
    assert_notified_once(receiver, NAMES, cut_off)
    for name in NAMES:
        await wait_until_clean(cluster, name)
