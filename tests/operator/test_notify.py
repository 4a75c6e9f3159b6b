"""A notification receiver that is down is retried and never holds up the workflow (docs/contract.md §4)."""

from __future__ import annotations

import json

from conftest import OperatorFactory, Receiver, TimedRuntime
from helpers import PUBLISH_RESULT, check_payload, make_workflow, status, wait_terminal

from operator_engine.devcluster import EmbeddedCluster, Outcome


async def test_a_briefly_down_receiver_gets_the_notifications_by_retry(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-retry"
    receiver.fail_first = 2
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    body = make_workflow(name)
    async with operator():
        await cluster.create(body)
        final = status(await wait_terminal(cluster, name))
        starts = await receiver.wait("/start", name, timeout=60)
        stops = await receiver.wait("/stop", name, timeout=60)
    assert final["phase"] == "Succeeded", final
    assert len(starts) == 1 and len(stops) == 1, receiver.all()
    check_payload(starts[0], body)
    check_payload(stops[0], body)


async def test_a_receiver_that_stays_down_does_not_hold_up_the_workflow(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-down"
    receiver.fail_first = 10**9
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator():
        await cluster.create(make_workflow(name))
        final = status(await wait_terminal(cluster, name, timeout=30))
    assert final["phase"] == "Succeeded", final
    assert receiver.all("/start"), "the start notification was never attempted"


async def test_without_a_private_key_the_signature_is_null(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-unsigned"
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator(OPERATOR_PRIVATE_KEY=None):
        await cluster.create(make_workflow(name))
        await wait_terminal(cluster, name)
        starts = await receiver.wait("/start", name)
        stops = await receiver.wait("/stop", name)
    assert starts[0]["signature"] is None and stops[0]["signature"] is None, (starts, stops)
