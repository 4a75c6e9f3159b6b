"""A stopped or timed-out stage is gone before anything reads its outputs (docs/SECURITY.md §3).

The algorithm here ignores SIGTERM: told to stop, it goes on for a few
seconds (until the kubelet's SIGKILL at the latest), as a hostile one would,
rewriting its outputs or swapping a file for a link. The filter or publish
Job must be created only after the algorithm's pods are gone, which the
embedded cluster's change stream orders exactly (one resourceVersion per
change, as etcd's revision).
"""

from __future__ import annotations

import json

import pytest
from conftest import History, OperatorFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    make_workflow,
    patch_spec,
    resource_of,
    status,
    wait_code,
    wait_terminal,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome

STOP_DELAY = 3.0  # how long the algorithm goes on after SIGTERM (its grace period is 30 s)


def stubborn_algorithm(runtime: TimedRuntime, name: str) -> None:
    runtime.script(f"{name}-algorithm-job", Outcome(hang=True, stop_delay=STOP_DELAY))
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))


async def assert_reader_started_after_the_algorithm_was_gone(
    cluster: EmbeddedCluster, history: History, runtime: TimedRuntime, name: str, reader: str
) -> None:
    await history.sync()
    algorithm, reader_job = f"{name}-algorithm-job", f"{name}-{reader}-job"
    pods_gone = [
        c.rv
        for c in history.changes
        if c.plural == "pods"
        and c.type == "DELETED"
        and (c.object["metadata"].get("labels") or {}).get("job-name") == algorithm
    ]
    reader_created = [c.rv for c in history.added("jobs") if c.name == reader_job]
    assert pods_gone and reader_created, (pods_gone, reader_created)
    assert max(pods_gone) < reader_created[0], (
        f"the {reader} Job was created (rv {reader_created[0]}) before the algorithm pod was gone (rv {pods_gone})"
    )
    # The runtime's own clock agrees: the algorithm's process had ended before the reader's began.
    assert runtime.finish_times[algorithm] <= runtime.start_times[reader_job]
    # The operator asked for the foreground deletion itself.
    deletes = [r for r in cluster.request_log if r.method == "DELETE" and resource_of(r)[:2] == ("jobs", algorithm)]
    assert deletes and (deletes[0].body or {}).get("propagationPolicy") == "Foreground", deletes


@pytest.mark.parametrize("filtering", [False, True], ids=["publish", "filter"])
async def test_a_stopped_algorithm_that_ignores_sigterm_is_gone_before_its_outputs_are_read(
    operator: OperatorFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
    history: History,
    filtering: bool,
) -> None:
    name = "wf-stubborn"
    stubborn_algorithm(runtime, name)
    settings = {"FILTERING_CONTAINER": "oceanprotocol/filter:1.0"} if filtering else {}
    async with operator(**settings):
        await cluster.create(make_workflow(name))
        await runtime.wait_started(f"{name}-algorithm-job", timeout=60)
        await wait_code(cluster, name, 40)
        await patch_spec(cluster, name, {"stopRequested": True})
        final = status(await wait_terminal(cluster, name, timeout=90))
        await wait_until_clean(cluster, name)
    assert (final["phase"], final["stopreq"], final["statusCode"]) == ("Stopped", 1, 70), final
    await assert_reader_started_after_the_algorithm_was_gone(
        cluster, history, runtime, name, "filter" if filtering else "publish"
    )


async def test_a_timed_out_algorithm_that_ignores_sigterm_is_gone_before_publish(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver, history: History
) -> None:
    name = "wf-stubborn-timeout"
    stubborn_algorithm(runtime, name)
    async with operator():
        await cluster.create(make_workflow(name, maxtime=2))
        final = status(await wait_terminal(cluster, name, timeout=90))
        await wait_until_clean(cluster, name)
    assert (final["phase"], final["stopreq"]) == ("TimedOut", 2), final
    await history.sync()
    algorithm, publish = f"{name}-algorithm-job", f"{name}-publish-job"
    assert runtime.finish_times[algorithm] <= runtime.start_times[publish]
    ended = [
        c.rv
        for c in history.changes
        if c.plural == "pods"
        and c.type != "ADDED"
        and (c.object["metadata"].get("labels") or {}).get("job-name") == algorithm
        and (c.object.get("status") or {}).get("phase") == "Failed"
    ]
    created = [c.rv for c in history.added("jobs") if c.name == publish]
    assert ended and created and ended[0] < created[0], (ended, created)
