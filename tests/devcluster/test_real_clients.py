"""The official kubernetes client and real kubectl against the embedded cluster."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil

import kubernetes
import pytest

from operator_engine.devcluster import EmbeddedCluster, Outcome

from .helpers import job_manifest, workflow_manifest

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
NS = "ocean-compute"


def _client(cluster: EmbeddedCluster) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    config.host = cluster.url
    return kubernetes.client.ApiClient(config)


async def test_kubernetes_client_create_list_patch_status_delete(cluster: EmbeddedCluster) -> None:
    cluster.runtime.script("*", Outcome(hang=True))  # type: ignore[attr-defined]  # keep the controller quiet
    batch = kubernetes.client.BatchV1Api(_client(cluster))
    await asyncio.to_thread(batch.create_namespaced_job, NS, job_manifest("j1", labels={"app": "wf1"}))
    await asyncio.to_thread(batch.create_namespaced_job, NS, job_manifest("j2", labels={"app": "wf2"}))
    listed = await asyncio.to_thread(batch.list_namespaced_job, NS, label_selector="app=wf1")
    assert [job.metadata.name for job in listed.items] == ["j1"]
    assert listed.items[0].metadata.uid and listed.items[0].metadata.creation_timestamp
    patched = await asyncio.to_thread(batch.patch_namespaced_job_status, "j1", NS, {"status": {"failed": 1}})
    assert patched.status.failed == 1
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        await asyncio.to_thread(batch.create_namespaced_job, NS, job_manifest("j1"))
    assert conflict.value.status == 409
    await asyncio.to_thread(batch.delete_namespaced_job, "j1", NS, propagation_policy="Background")
    assert await cluster.get("job", "j1") is None


async def test_kubernetes_client_custom_objects(cluster: EmbeddedCluster) -> None:
    custom = kubernetes.client.CustomObjectsApi(_client(cluster))
    args = ("oceanprotocol.com", "v1alpha", NS, "workflows")
    await asyncio.to_thread(custom.create_namespaced_custom_object, *args, workflow_manifest("wf1"))
    await asyncio.to_thread(custom.patch_namespaced_custom_object_status, *args, "wf1", {"status": {"phase": "Queued"}})
    listed = await asyncio.to_thread(custom.list_namespaced_custom_object, *args)
    assert listed["kind"] == "WorkFlowList" and listed["items"][0]["status"] == {"phase": "Queued"}


async def _kubectl(kubeconfig: pathlib.Path, *args: str, stdin: str | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(kubeconfig),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture
def kubeconfig(cluster: EmbeddedCluster, tmp_path: pathlib.Path) -> pathlib.Path:
    return cluster.write_kubeconfig(tmp_path / "kubeconfig")


async def test_kubectl_get_jobs(cluster: EmbeddedCluster, kubeconfig: pathlib.Path) -> None:
    await cluster.create(job_manifest("j1"))
    await cluster.wait_for("job", "j1", lambda j: (j.get("status") or {}).get("succeeded"))
    assert "j1" in await _kubectl(kubeconfig, "get", "jobs")
    listed = json.loads(await _kubectl(kubeconfig, "get", "pods", "-l", "job-name=j1", "-o", "json"))
    assert len(listed["items"]) == 1


async def test_kubectl_apply_and_get_workflow_by_short_name(cluster: EmbeddedCluster, kubeconfig: pathlib.Path) -> None:
    manifest = json.dumps(workflow_manifest("wf1"))
    await _kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=manifest)
    assert "wf1" in await _kubectl(kubeconfig, "get", "wf")
    changed = json.dumps(workflow_manifest("wf1", owner="me"))
    await _kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=changed)
    wf = await cluster.get("wf", "wf1")
    assert wf is not None and wf["spec"]["owner"] == "me" and wf["metadata"]["generation"] == 2


async def test_kubectl_describe_job(cluster: EmbeddedCluster, kubeconfig: pathlib.Path) -> None:
    await cluster.create(job_manifest("j1"))
    await cluster.wait_for("job", "j1", lambda j: (j.get("status") or {}).get("succeeded"))
    assert "j1" in await _kubectl(kubeconfig, "describe", "job", "j1")


async def test_leases_are_served_with_optimistic_concurrency(cluster: EmbeddedCluster) -> None:
    """Leader election (operator_engine/leader.py) relies on a stale resourceVersion being refused."""
    api = kubernetes.client.CoordinationV1Api(_client(cluster))
    body = kubernetes.client.V1Lease(
        metadata=kubernetes.client.V1ObjectMeta(name="l1"),
        spec=kubernetes.client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=10),
    )
    await asyncio.to_thread(api.create_namespaced_lease, NS, body)
    read = await asyncio.to_thread(api.read_namespaced_lease, "l1", NS)
    assert read.spec.holder_identity == "a" and read.metadata.resource_version
    read.spec.holder_identity = "b"
    renewed = await asyncio.to_thread(api.replace_namespaced_lease, "l1", NS, read)
    assert renewed.spec.holder_identity == "b"
    read.spec.holder_identity = "c"  # still carries the resourceVersion before b's write
    with pytest.raises(kubernetes.client.ApiException) as stale:
        await asyncio.to_thread(api.replace_namespaced_lease, "l1", NS, read)
    assert stale.value.status == 409
    assert (await asyncio.to_thread(api.read_namespaced_lease, "l1", NS)).spec.holder_identity == "b"
