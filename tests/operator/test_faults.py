"""API faults (500, 429) for a window: every workflow still completes."""

from __future__ import annotations

import json

from conftest import OperatorFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    make_workflow,
    patch_spec,
    status,
    wait_code,
    wait_terminal,
    wait_until_clean,
    wait_workflow,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome

NAMES = ["wf-fault-0", "wf-fault-1", "wf-fault-2"]
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


async def _run_under_faults(
    operator: OperatorFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
    methods: tuple[str, ...],
    seed: int,
) -> None:
    runtime.script("*-algorithm-job", Outcome(duration=0.3))
    runtime.script("*-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator(maxJobs="2"):
        start = len(cluster.request_log)
        cluster.faults.inject(rate=0.25, statuses=(500, 429), methods=methods, seed=seed)
        try:
            for name in NAMES:
                await cluster.create(make_workflow(name))
            finals = {name: status(await wait_terminal(cluster, name, timeout=240)) for name in NAMES}
        finally:
            cluster.faults.clear()
        window = [r for r in cluster.request_log[start:] if r.method in methods]
        for name in NAMES:
            await receiver.wait("/stop", name, timeout=120)
            await wait_until_clean(cluster, name, timeout=120)
    faulted = [r for r in window if r.faulted]
    assert len(window) >= 20 and len(faulted) / len(window) >= 0.2, (
        f"the fault window was too weak: {len(faulted)} of {len(window)} requests faulted"
    )
    for name, final in finals.items():
        assert final["phase"] == "Succeeded", (name, final)
        assert final["statusCode"] == 70, (name, final)
    for name in NAMES:
        assert len(receiver.accepted("/start", name)) == 1, (name, receiver.all())
        assert len(receiver.accepted("/stop", name)) == 1, (name, receiver.all())


async def test_every_workflow_completes_while_a_quarter_of_writes_fail(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    await _run_under_faults(operator, cluster, runtime, receiver, ("POST", "PUT", "PATCH", "DELETE"), seed=7)


async def test_every_workflow_completes_while_a_quarter_of_all_requests_fail(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    await _run_under_faults(operator, cluster, runtime, receiver, ALL_METHODS, seed=11)


async def test_a_permanent_api_error_ends_the_workflow_failed_with_its_message(
    operator: OperatorFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    # The API server refuses every Job for good (422, as an admission webhook or a policy
    # would): no retry can help, so the workflow must end, saying why, and clean up.
    async with operator():
        cluster.faults.inject(rate=1.0, statuses=(422,), methods=("POST",), path_contains="/jobs")
        await cluster.create(make_workflow("wf-refused"))
        final = status(await wait_terminal(cluster, "wf-refused", timeout=60))
        cluster.faults.clear()
        await receiver.wait("/stop", "wf-refused", timeout=60)
        await wait_until_clean(cluster, "wf-refused", timeout=60)
    assert (final["phase"], final["statusCode"]) == ("Failed", 70)
    assert final["message"].startswith("the API server refused a request: 422")


async def test_a_permanent_api_error_admits_the_next_queued_workflow_at_once(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    """The refused workflow's slot is free as soon as it ends: the queued one starts then, not at the backstop.

    maxJobs 1 and a backstop an hour away, so only the refusal's own handling
    can admit the second workflow within the deadline. The first is stopped
    while it configures, and the API server refuses for good to delete its
    configure Job (403, as a policy would).
    """
    first, second = "wf-a-refused", "wf-b-next"
    runtime.script(f"{first}-configure-job", Outcome(duration=600))
    runtime.script(f"{second}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator(maxJobs="1", OPERATOR_BACKSTOP_SECONDS="3600"):
        await cluster.create(make_workflow(first))
        await wait_code(cluster, first, 20)
        await cluster.create(make_workflow(second))
        await wait_workflow(cluster, second, lambda o: status(o).get("phase") == "Queued", what="Queued")
        cluster.faults.inject(
            rate=1.0, statuses=(403,), methods=("DELETE",), path_contains=f"/jobs/{first}-configure-job"
        )
        try:
            await patch_spec(cluster, first, {"stopRequested": True})
            refused = status(await wait_terminal(cluster, first, timeout=30))
            await wait_workflow(
                cluster, second, lambda o: status(o).get("dateStarted"), timeout=20, what="admitted at once"
            )
        finally:
            cluster.faults.clear()
        done = status(await wait_terminal(cluster, second, timeout=60))
    assert (refused["phase"], refused["statusCode"]) == ("Failed", 70), refused
    assert refused["message"].startswith("the API server refused a request: 403"), refused
    assert done["phase"] == "Succeeded", done
