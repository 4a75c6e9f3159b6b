"""Timeouts, stop and delete: each ends as the contract says, with nothing left running."""

from __future__ import annotations

import json

from conftest import OperatorFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    check_payload,
    created,
    creation_posts,
    jobs_of,
    make_workflow,
    patch_spec,
    posted_name,
    running_pods_of,
    status,
    wait_code,
    wait_gone,
    wait_terminal,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome


def hang_algorithm(runtime: TimedRuntime, name: str) -> None:
    runtime.script(f"{name}-algorithm-job", Outcome(hang=True))
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))


def algorithm_deadline(cluster: EmbeddedCluster, name: str) -> int | None:
    for record in creation_posts(cluster, "jobs"):
        if posted_name(record) == f"{name}-algorithm-job":
            return record.body["spec"].get("activeDeadlineSeconds")
    return None


async def assert_nothing_runs(cluster: EmbeddedCluster, runtime: TimedRuntime, name: str) -> None:
    await wait_until_clean(cluster, name)
    assert await jobs_of(cluster, name) == []
    assert await running_pods_of(cluster, name) == []
    unfinished = [job for job in runtime.started if job.startswith(name + "-") and job not in runtime.finished]
    assert not unfinished, f"pods still running in the runtime: {unfinished}"


# ---------------------------------------------------------------- timeouts


async def test_timeout_by_stage_maxtime_ends_timed_out_and_publishes(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-timeout"
    hang_algorithm(runtime, name)
    async with operator():
        await cluster.create(make_workflow(name, maxtime=2))
        final = status(await wait_terminal(cluster, name, timeout=60))
        await receiver.wait("/stop", name)
        await assert_nothing_runs(cluster, runtime, name)
    assert algorithm_deadline(cluster, name) == 2
    assert final["phase"] == "TimedOut", final
    assert final["stopreq"] == 2, final
    assert final["statusCode"] == 70, final
    assert final.get("message"), final
    assert created(cluster, "jobs", name)[-1] == f"{name}-publish-job", "the logs are still published"
    assert runtime.finished.get(f"{name}-algorithm-job") is None, "the algorithm was killed, not finished"


async def test_timeout_clamped_by_max_job_duration(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-clamped"
    hang_algorithm(runtime, name)
    async with operator(maxJobDuration="2"):
        await cluster.create(make_workflow(name, maxtime=600))
        final = status(await wait_terminal(cluster, name, timeout=60))
        await assert_nothing_runs(cluster, runtime, name)
    assert algorithm_deadline(cluster, name) == 2
    assert final["phase"] == "TimedOut", final
    assert final["stopreq"] == 2, final
    assert final["statusCode"] == 70, final
    assert f"{name}-publish-job" in created(cluster, "jobs", name)


# ---------------------------------------------------------------- stop


async def test_stop_requested_deletes_the_algorithm_and_ends_stopped(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-stop"
    hang_algorithm(runtime, name)
    body = make_workflow(name)
    async with operator():
        await cluster.create(body)
        await runtime.wait_started(f"{name}-algorithm-job", timeout=60)
        await wait_code(cluster, name, 40)
        await patch_spec(cluster, name, {"stopRequested": True})
        final = status(await wait_terminal(cluster, name, timeout=60))
        await receiver.wait("/stop", name)
        await assert_nothing_runs(cluster, runtime, name)
    assert final["phase"] == "Stopped", final
    assert final["stopreq"] == 1, final
    assert final["statusCode"] == 70, final
    algorithm, publish = f"{name}-algorithm-job", f"{name}-publish-job"
    assert runtime.finished.get(algorithm) is None, "the algorithm pod was killed"
    assert publish in created(cluster, "jobs", name), "the logs are still published"
    assert runtime.finish_times[algorithm] <= runtime.start_times[publish], (
        "the algorithm must be stopped before publishing"
    )
    assert len(receiver.accepted("/stop", name)) == 1
    check_payload(receiver.accepted("/stop", name)[0], body)


# ---------------------------------------------------------------- delete


async def test_deleting_a_running_workflow_stops_cleans_up_and_notifies_once(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-delete"
    hang_algorithm(runtime, name)
    body = make_workflow(name)
    async with operator():
        await cluster.create(body)
        await runtime.wait_started(f"{name}-algorithm-job", timeout=60)
        await receiver.wait("/start", name)
        # The start notification went out, so the deletion must be seen through (a finalizer).
        finalizers = ((await cluster.get("wf", name)) or {}).get("metadata", {}).get("finalizers")
        await cluster.delete("wf", name)
        await wait_gone(cluster, "wf", name, timeout=60)
        try:
            await receiver.wait("/stop", name, timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}\n(finalizers on the Workflow when it was deleted: {finalizers})") from None
        await assert_nothing_runs(cluster, runtime, name)
    assert runtime.finished.get(f"{name}-algorithm-job") is None, "the algorithm pod was killed"
    assert len(receiver.accepted("/start", name)) == 1, receiver.all()
    assert len(receiver.accepted("/stop", name)) == 1, receiver.all()
    check_payload(receiver.accepted("/stop", name)[0], body)
    for plural in ("configmaps", "persistentvolumeclaims", "secrets", "jobs"):
        assert await cluster.list(plural, {"app": name}) == [], plural


async def test_deleting_a_queued_workflow_sends_no_notification(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    hang_algorithm(runtime, "wf-0")
    async with operator(maxJobs="1"):
        await cluster.create(make_workflow("wf-0"))
        await runtime.wait_started("wf-0-algorithm-job", timeout=60)
        await cluster.create(make_workflow("wf-1"))
        queued = await wait_code(cluster, "wf-1", 1)
        assert status(queued).get("phase") == "Queued", status(queued)
        await cluster.delete("wf", "wf-1")
        await wait_gone(cluster, "wf", "wf-1", timeout=60)
        # Then stop the running one, so that the operator ends with nothing running.
        await patch_spec(cluster, "wf-0", {"stopRequested": True})
        await wait_terminal(cluster, "wf-0")
        await receiver.wait("/stop", "wf-0")
    assert receiver.accepted("/start", "wf-1") == [] and receiver.accepted("/stop", "wf-1") == [], receiver.all()
    assert created(cluster, "jobs", "wf-1") == []
