"""
Workflows end to end on the real control plane: the real Job controller, scheduler and garbage
collector, the process node running the real pod programs, the operator as its ServiceAccount.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from operator_engine.demo import load_sample_workflow

from .conftest import RealCluster, RealOperator, operator_helpers
from .support import is_terminal, status, wait_until

SLEEP_ALGORITHM = 'import time\nprint("sleeping", flush=True)\ntime.sleep({seconds})\nprint("awake")\n'
FAILING_ALGORITHM = 'import sys\nprint("about to fail", flush=True)\nsys.exit(3)\n'


def sample(real: RealCluster, name: str) -> dict[str, Any]:
    """k8s_install/workflow-1.yaml, renamed, its URLs on the session's data server."""
    body = load_sample_workflow(urllib.parse.urlsplit(real.data_url).port or 0)
    body["metadata"]["name"] = name
    body["metadata"]["labels"] = {"workflow": name}
    return body


def with_algorithm(real: RealCluster, name: str, code: str, maxtime: int | None = None) -> dict[str, Any]:
    body = sample(real, name)
    stage = body["spec"]["metadata"]["stages"][0]
    stage["algorithm"].pop("url", None)
    stage["algorithm"]["rawcode"] = code
    if maxtime is not None:
        stage["compute"]["maxtime"] = maxtime
    return body


def jobs_in_order(real: RealCluster, name: str) -> list[str]:
    added = [(c.time, c.name) for c in real.history.of("jobs") if c.type == "ADDED" and c.name.startswith(name + "-")]
    seen: list[str] = []
    for _, job in sorted(added):
        if job not in seen:
            seen.append(job)
    return seen


def wait_volumes_released(real: RealCluster, name: str) -> None:
    """The node's provisioner gave each of the workflow's two claims a local volume; once the claims are gone,
    so are the volumes and their folders."""
    claims = [c.uid for c in real.history.of("persistentvolumeclaims") if c.type == "ADDED" and c.name.startswith(name)]
    assert len(claims) == 2, claims

    def volumes_left() -> list[str]:
        names = {v.metadata.name for v in real.kube.core.list_persistent_volume().items}
        return [uid for uid in claims if f"pvc-{uid}" in names or (real.node.root / "volumes" / f"pvc-{uid}").exists()]

    wait_until(
        lambda: not volumes_left(), 60, "the volumes of the deleted claims to be removed", lambda: str(volumes_left())
    )


def test_happy_path_runs_the_real_pod_programs_in_order_and_cleans_up(
    real: RealCluster, operator: Any, receiver: Any
) -> None:
    name = "rc-happy"
    op: RealOperator = operator()
    body = sample(real, name)
    created = real.kube.create_workflow(body)
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["phase"] == "Succeeded", final
    assert final["statusCode"] == 70, final
    codes = real.history.codes(name)
    assert operator_helpers.is_subsequence([10, 20, 30, 40, 60, 70], codes), codes
    assert codes == sorted(codes), f"status codes went backwards: {codes}"

    # The demo's real per-station summary, published by the publish pod into LOCAL_STORAGE_DIR.
    outputs = Path(operator.results) / name / "outputs"
    produced = sorted(p.name for p in outputs.iterdir())
    assert produced, f"no outputs in {outputs}"
    assert [u for u in final["outputsUrl"] if u.startswith("file://")], final
    assert final.get("algologUrl") and final.get("configlogUrl") and final.get("publishlogUrl"), final

    assert jobs_in_order(real, name) == [f"{name}-configure-job", f"{name}-algorithm-job", f"{name}-publish-job"]
    first_job = real.history.first_added("jobs", f"{name}-configure-job")
    for plural, child in (
        ("configmaps", name),
        ("persistentvolumeclaims", f"{name}-data"),
        ("persistentvolumeclaims", f"{name}-adminlogs"),
    ):
        added = real.history.first_added(plural, child)
        assert added is not None and first_job is not None and added <= first_job, (plural, child)
    # Every child carried an owner reference to the Workflow (what the garbage collector follows).
    for plural in ("jobs", "configmaps", "persistentvolumeclaims", "secrets"):
        for change in real.history.of(plural):
            if change.type == "ADDED" and change.name.startswith(name):
                owners = change.object["metadata"].get("ownerReferences") or []
                assert [o["uid"] for o in owners] == [created["metadata"]["uid"]], (plural, change.name, owners)
    # Every pod ran on the process node, scheduled by the real scheduler.
    pods = [c.object for c in real.history.of("pods") if c.type == "ADDED" and c.name.startswith(name)]
    assert len(pods) >= 3
    real.kube.wait_clean(name)
    wait_volumes_released(real, name)
    assert len(receiver.accepted("/start", name)) == 1
    wait_until(lambda: receiver.accepted("/stop", name), 60, "the stop notification")
    operator_helpers.check_payload(receiver.accepted("/stop", name)[0], body)


def test_children_kept_by_debug_no_cleanup_are_collected_with_the_workflow(real: RealCluster, operator: Any) -> None:
    name = "rc-gc"
    op = operator(DEBUG_NO_CLEANUP="1")
    real.kube.create_workflow(sample(real, name))
    assert real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])["phase"] == "Succeeded"
    kept = real.kube.children(name)
    assert kept.get("jobs") and kept.get("persistentvolumeclaims") and kept.get("configmaps"), kept
    op.stop()  # the operator is gone: only the garbage collector can remove the children now
    real.kube.custom.patch_namespaced_custom_object(
        "oceanprotocol.com", "v1alpha", "ocean-compute", "workflows", name, {"metadata": {"finalizers": None}}
    )
    real.kube.delete_workflow(name)
    real.kube.wait_gone(name)
    real.kube.wait_clean(name)  # the real garbage collector followed the owner references


@pytest.mark.parametrize(
    ("code", "change"),
    [
        (31, "input"),
        (32, "algorithm"),
    ],
    ids=["31-unreachable-input", "32-missing-algorithm"],
)
def test_provisioning_failures_end_failed_with_their_code(
    real: RealCluster, operator: Any, code: int, change: str
) -> None:
    from demo.helpers import closed_port

    name = f"rc-fail-{code}"
    body = sample(real, name)
    stage = body["spec"]["metadata"]["stages"][0]
    if change == "input":
        stage["input"][0]["url"] = [f"http://127.0.0.1:{closed_port()}/gone.csv"]
    else:
        stage["algorithm"]["url"] = real.data_url + "/algorithms/no-such-algorithm.py"
    op = operator()
    real.kube.create_workflow(body)
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["statusCode"] == code, final
    assert final["phase"] == "Failed", final
    assert final.get("message"), final
    assert f"{name}-algorithm-job" not in jobs_in_order(real, name)
    real.kube.wait_clean(name)


def test_a_failing_algorithm_ends_failed_and_its_logs_are_published(real: RealCluster, operator: Any) -> None:
    name = "rc-algo-fails"
    op = operator()
    real.kube.create_workflow(with_algorithm(real, name, FAILING_ALGORITHM))
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["phase"] == "Failed", final
    assert final["statusCode"] == 70, final
    assert "3" in final.get("message", ""), final
    assert jobs_in_order(real, name)[-1] == f"{name}-publish-job"
    pods = [c.object for c in real.history.of("pods") if c.name.startswith(f"{name}-algorithm-job")]
    terminated = [
        s["state"]["terminated"]
        for p in pods
        for s in (p.get("status") or {}).get("containerStatuses") or []
        if "terminated" in s["state"]
    ]
    assert terminated and terminated[-1]["exitCode"] == 3 and terminated[-1]["reason"] == "Error", terminated
    real.kube.wait_clean(name)


@pytest.mark.parametrize("limit", ["maxtime", "maxJobDuration"])
def test_the_job_controller_enforces_the_deadline_and_the_workflow_times_out(
    real: RealCluster, operator: Any, limit: str
) -> None:
    name = f"rc-timeout-{limit.lower()}"
    if limit == "maxtime":
        op = operator()
        body = with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=600), maxtime=3)
    else:
        op = operator(maxJobDuration="3")
        body = with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=600), maxtime=600)
    real.kube.create_workflow(body)
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["phase"] == "TimedOut", final
    assert final["stopreq"] == 2, final
    assert final["statusCode"] == 70, final
    job = f"{name}-algorithm-job"
    reasons = {
        c.get("reason")
        for change in real.history.of("jobs", job)
        for c in (change.object.get("status") or {}).get("conditions") or []
        if c.get("type") == "Failed"
    }
    assert reasons == {"DeadlineExceeded"}, reasons
    deadlines = {
        (change.object.get("spec") or {}).get("activeDeadlineSeconds") for change in real.history.of("jobs", job)
    }
    assert deadlines == {3}, deadlines
    assert jobs_in_order(real, name)[-1] == f"{name}-publish-job", "the logs are still published"
    real.kube.wait_clean(name)


def test_stop_requested_kills_the_algorithm_and_ends_stopped(real: RealCluster, operator: Any, receiver: Any) -> None:
    name = "rc-stop"
    op = operator()
    body = with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=600))
    real.kube.create_workflow(body)
    real.kube.wait_code(name, 40, context=lambda: op.log()[-3000:])
    wait_until(lambda: real.kube.running_pods(name), 60, "the algorithm pod to run")
    real.kube.patch_spec(name, {"stopRequested": True})
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["phase"] == "Stopped", final
    assert final["stopreq"] == 1, final
    assert final["statusCode"] == 70, final
    assert jobs_in_order(real, name)[-1] == f"{name}-publish-job"
    real.kube.wait_clean(name)
    wait_until(lambda: receiver.accepted("/stop", name), 60, "the stop notification")
    assert len(receiver.accepted("/stop", name)) == 1


def test_deleting_a_running_workflow_goes_through_the_finalizer(
    real: RealCluster, operator: Any, receiver: Any
) -> None:
    name = "rc-delete"
    op = operator()
    body = with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=600))
    real.kube.create_workflow(body)
    real.kube.wait_code(name, 40, context=lambda: op.log()[-3000:])
    wait_until(lambda: receiver.accepted("/start", name), 60, "the start notification")
    finalizers = (real.kube.workflow(name) or {}).get("metadata", {}).get("finalizers")
    assert finalizers, "a started workflow carries the operator's finalizer"
    real.kube.delete_workflow(name)
    deleting = real.kube.workflow(name)
    assert deleting is not None and deleting["metadata"].get("deletionTimestamp"), (
        "the real API server keeps an object with finalizers, marked for deletion"
    )
    real.kube.wait_gone(name)
    wait_until(lambda: receiver.accepted("/stop", name), 60, "the stop notification")
    real.kube.wait_clean(name)
    wait_volumes_released(real, name)
    assert len(receiver.accepted("/start", name)) == 1, receiver.all()
    assert len(receiver.accepted("/stop", name)) == 1, receiver.all()
    operator_helpers.check_payload(receiver.accepted("/stop", name)[0], body)


def test_max_jobs_two_over_six_workflows(real: RealCluster, operator: Any) -> None:
    names = [f"rc-max-{i}" for i in range(6)]
    op = operator(maxJobs="2")
    for name in names:
        real.kube.create_workflow(with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=2)))
    finals = {name: real.kube.wait_terminal(name, timeout=600, context=lambda: op.log()[-3000:]) for name in names}
    assert {n: f["phase"] for n, f in finals.items()} == {n: "Succeeded" for n in names}, json.dumps(finals)[:3000]
    assert real.history.max_admitted(names) == 2
    for name in names:
        real.kube.wait_clean(name)


def test_every_pod_reports_its_end_as_a_kubelet_does(real: RealCluster, operator: Any) -> None:
    """The node's pod status: phase, conditions, containerStatuses terminated with reason and message."""
    name = "rc-status"
    op = operator()
    real.kube.create_workflow(sample(real, name))
    assert real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])["phase"] == "Succeeded"
    ended = {}
    for change in real.history.of("pods"):
        if change.name.startswith(name) and (change.object.get("status") or {}).get("phase") == "Succeeded":
            ended[change.name] = change.object
    assert len(ended) >= 3, sorted(ended)
    for pod in ended.values():
        st = pod["status"]
        assert pod["spec"]["nodeName"] == real.node.name
        conditions = {c["type"]: c["status"] for c in st["conditions"]}
        assert conditions["PodScheduled"] == "True" and conditions["Ready"] == "False", conditions
        [container] = st["containerStatuses"]
        terminated = container["state"]["terminated"]
        assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed", terminated
    publish = next(p for n, p in ended.items() if n.startswith(f"{name}-publish-job"))
    message = publish["status"]["containerStatuses"][0]["state"]["terminated"].get("message", "")
    assert "outputsUrl" in message, message  # the publish pod's termination message, read by the operator
    assert is_terminal(real.kube.workflow(name))
    assert status(real.kube.workflow(name))["phase"] == "Succeeded"
