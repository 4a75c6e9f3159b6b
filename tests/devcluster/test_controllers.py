"""The garbage collector and the job controller with the scripted runtime."""

from __future__ import annotations

from typing import Any

import aiohttp

from operator_engine.devcluster import EmbeddedCluster, Outcome

from .helpers import job_manifest, workflow_manifest


def _condition(job: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return condition
    return None


def _finished(job: dict[str, Any] | None) -> bool:
    return bool(_condition(job, "Complete") or _condition(job, "Failed"))


async def _run(cluster: EmbeddedCluster, name: str, **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    await cluster.create(job_manifest(name, **spec))
    job = await cluster.wait_for("job", name, _finished)
    assert job is not None
    pods = await cluster.list("pod", labels={"job-name": name})
    assert len(pods) == 1
    return job, pods[0]


def _owner(uid: str, kind: str = "WorkFlow", name: str = "wf1") -> dict[str, Any]:
    return {"apiVersion": "oceanprotocol.com/v1alpha", "kind": kind, "name": name, "uid": uid}


async def test_gc_deletes_dependents_recursively(cluster: EmbeddedCluster) -> None:
    wf = await cluster.create(workflow_manifest("wf1"))
    cm = await cluster.create(
        {"kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [_owner(wf["metadata"]["uid"])]}}
    )
    await cluster.create(
        {
            "kind": "Secret",
            "metadata": {
                "name": "grandchild",
                "ownerReferences": [_owner(cm["metadata"]["uid"], "ConfigMap", "child")],
            },
        }
    )
    await cluster.delete("wf", "wf1")
    assert await cluster.wait_for("secret", "grandchild", lambda o: o is None) is None
    assert await cluster.get("configmap", "child") is None


async def test_gc_keeps_dependents_with_a_live_owner(cluster: EmbeddedCluster) -> None:
    wf1 = await cluster.create(workflow_manifest("wf1"))
    wf2 = await cluster.create(workflow_manifest("wf2"))
    await cluster.create(
        {
            "kind": "ConfigMap",
            "metadata": {
                "name": "shared",
                "ownerReferences": [_owner(wf1["metadata"]["uid"]), _owner(wf2["metadata"]["uid"], name="wf2")],
            },
        }
    )
    await cluster.delete("wf", "wf1")
    cm = await cluster.wait_for("configmap", "shared", lambda o: len(o["metadata"]["ownerReferences"]) == 1)
    assert cm is not None and cm["metadata"]["ownerReferences"][0]["uid"] == wf2["metadata"]["uid"]


async def test_gc_deletes_objects_whose_owner_never_existed(cluster: EmbeddedCluster) -> None:
    await cluster.create({"kind": "ConfigMap", "metadata": {"name": "orphan", "ownerReferences": [_owner("nope")]}})
    assert await cluster.wait_for("configmap", "orphan", lambda o: o is None) is None


async def test_job_success_sets_job_and_pod_status(cluster: EmbeddedCluster) -> None:
    job, pod = await _run(cluster, "ok")
    assert job["status"]["succeeded"] == 1 and "active" not in job["status"] and "failed" not in job["status"]
    assert job["status"]["startTime"] and job["status"]["completionTime"]
    assert _condition(job, "Complete")["status"] == "True"  # type: ignore[index]
    assert _condition(job, "SuccessCriteriaMet")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert terminated["startedAt"] and terminated["finishedAt"] and "message" not in terminated


async def test_job_pod_is_named_labelled_and_owned_like_the_real_controller(cluster: EmbeddedCluster) -> None:
    job, pod = await _run(cluster, "wf1-algorithm-job")
    meta = pod["metadata"]
    assert meta["name"].startswith("wf1-algorithm-job-") and len(meta["name"]) == len("wf1-algorithm-job-") + 5
    expected = {"job-name": "wf1-algorithm-job", "controller-uid": job["metadata"]["uid"], "component": "algorithm"}
    assert meta["labels"].items() >= expected.items()
    assert meta["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert pod["spec"]["containers"][0]["image"] == "busybox"


async def test_job_failure_carries_exit_code_and_termination_message(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("bad", Outcome(exit_code=3, message='{"statusCode": 31}'))  # type: ignore[attr-defined]
    job, pod = await _run(cluster, "bad")
    assert job["status"]["failed"] == 1 and "succeeded" not in job["status"] and "completionTime" not in job["status"]
    assert _condition(job, "Failed")["reason"] == "BackoffLimitExceeded"  # type: ignore[index]
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", '{"statusCode": 31}')


async def test_job_backoff_limit_retries_with_new_pods(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("flaky", Outcome(exit_code=1))  # type: ignore[attr-defined]
    await cluster.create(job_manifest("flaky", backoffLimit=2))
    job = await cluster.wait_for("job", "flaky", _finished)
    assert job is not None and job["status"]["failed"] == 3
    assert len(await cluster.list("pod", labels={"job-name": "flaky"})) == 3


async def test_job_running_pod_reports_running_state(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("slow-*", Outcome(hang=True))  # type: ignore[attr-defined]
    await cluster.create(job_manifest("slow-1"))
    pod = await cluster.runtime.wait_started("slow-1")
    running = await cluster.wait_for("pod", pod["metadata"]["name"], lambda p: p["status"]["phase"] == "Running")
    assert running is not None and running["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    job = await cluster.wait_for("job", "slow-1", lambda j: (j.get("status") or {}).get("active") == 1)
    assert job is not None and job["status"]["startTime"]


async def test_job_deadline_kills_the_pod_and_fails_the_job(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("stuck", Outcome(hang=True))  # type: ignore[attr-defined]
    job, pod = await _run(cluster, "stuck", activeDeadlineSeconds=0.3)
    assert _condition(job, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    assert job["status"]["failed"] == 1
    assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "DeadlineExceeded"
    assert await cluster.runtime.wait_finished("stuck") is None  # the runtime was cancelled


async def test_deleting_a_job_stops_its_pod_and_removes_it(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("doomed", Outcome(hang=True))  # type: ignore[attr-defined]
    await cluster.create(job_manifest("doomed"))
    pod = await cluster.runtime.wait_started("doomed")
    await cluster.delete("job", "doomed")
    assert await cluster.runtime.wait_finished("doomed") is None
    assert await cluster.wait_for("pod", pod["metadata"]["name"], lambda p: p is None) is None


async def test_deleting_a_running_pod_fails_the_job(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("victim", Outcome(hang=True))  # type: ignore[attr-defined]
    await cluster.create(job_manifest("victim"))
    pod = await cluster.runtime.wait_started("victim")
    await cluster.delete("pod", pod["metadata"]["name"])
    job = await cluster.wait_for("job", "victim", _finished)
    assert _condition(job, "Failed") and job["status"]["failed"] == 1  # type: ignore[index]


async def test_scripted_runtime_precedence(cluster: EmbeddedCluster) -> None:
    runtime = cluster.runtime
    runtime.script("*-job", Outcome(exit_code=2))  # type: ignore[attr-defined]
    runtime.script("exact-job", Outcome(exit_code=0))  # type: ignore[attr-defined]
    runtime.script_with(lambda job: Outcome(exit_code=5) if job["metadata"]["name"] == "ruled" else None)  # type: ignore[attr-defined]
    names = {"exact-job": 0, "other-job": 2, "ruled": 5, "plain": 0}
    for name in names:
        await cluster.create(job_manifest(name))
    for name, code in names.items():
        result = await runtime.wait_finished(name)
        assert result is not None and result.exit_code == code, name


async def test_pod_logs_are_served(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("talky", Outcome(logs="hello\n"))  # type: ignore[attr-defined]
    _, pod = await _run(cluster, "talky")
    async with aiohttp.ClientSession(base_url=cluster.url) as http:
        response = await http.get(f"/api/v1/namespaces/ocean-compute/pods/{pod['metadata']['name']}/log")
        assert await response.text() == "hello\n"


# ---------------------------------------------------------------- graceful and foreground deletion


async def test_a_deleted_running_pod_stays_until_its_containers_stopped(cluster: EmbeddedCluster) -> None:
    # Real Kubernetes: deletionTimestamp + grace period; the kubelet stops the containers,
    # then deletes the pod with a grace period of 0. A pod that ignores SIGTERM delays it.
    cluster.runtime.script("slow", Outcome(hang=True, stop_delay=1.0))  # type: ignore[attr-defined]
    await cluster.create(job_manifest("slow"))
    pod = await cluster.runtime.wait_started("slow")
    name = pod["metadata"]["name"]
    marked = await cluster.delete("pod", name)
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 30
    assert await cluster.get("pod", name) is not None, "the pod stays while its containers stop"
    assert "slow" not in cluster.runtime.finished
    await cluster.wait_for("pod", name, lambda p: p is None)
    assert "slow" in cluster.runtime.finished, "the pod went only after its containers ended"


async def test_a_finished_pod_is_deleted_at_once(cluster: EmbeddedCluster) -> None:
    _, pod = await _run(cluster, "quick")
    await cluster.delete("pod", pod["metadata"]["name"])
    assert await cluster.get("pod", pod["metadata"]["name"]) is None


async def test_foreground_deletion_removes_the_job_only_after_its_pods(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("fg", Outcome(hang=True, stop_delay=1.0))  # type: ignore[attr-defined]
    await cluster.create(job_manifest("fg"))
    pod = await cluster.runtime.wait_started("fg")
    since = cluster.api.resource_version
    async with aiohttp.ClientSession() as http:  # over HTTP, as the kubernetes client sends it
        async with http.delete(
            f"{cluster.url}/apis/batch/v1/namespaces/{cluster.namespace}/jobs/fg",
            json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"},
        ) as response:
            assert response.status == 200
            answer = await response.json()
    assert answer["metadata"]["finalizers"] == ["foregroundDeletion"] and answer["metadata"]["deletionTimestamp"]
    await cluster.wait_for("job", "fg", lambda j: j is None)
    removed: dict[str, int] = {}
    async for event in cluster.api.follow(since):
        if event.type == "DELETED":
            removed[event.object["metadata"]["name"]] = event.rv
        if "fg" in removed:
            break
    assert removed[pod["metadata"]["name"]] < removed["fg"], removed
    assert "fg" in cluster.runtime.finished
