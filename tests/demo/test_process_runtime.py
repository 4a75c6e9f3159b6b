"""The process runtime: pods as local processes, with volumes, env, termination messages, logs and kills."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from operator_engine.devcluster import EmbeddedCluster, PathMapper, ProcessRuntime

from .helpers import NS, assert_dead, process_job

PY = Path(sys.executable).name


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    async with EmbeddedCluster(namespace=NS, runtime=ProcessRuntime(tmp_path / "root", max_grace=1.0)) as running:
        yield running


def pod_status(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


async def finished_pod(cluster: EmbeddedCluster, job: str, timeout: float = 30.0) -> dict[str, Any]:
    await cluster.wait_for(
        "job",
        job,
        lambda j: (
            j and any(c["type"] in ("Complete", "Failed") for c in (j.get("status") or {}).get("conditions") or [])
        ),
        timeout=timeout,
    )
    pods = await cluster.list("pod", {"job-name": job})
    assert len(pods) == 1
    return pods[0]


def test_path_mapper_rewrites_whole_prefixes_only() -> None:
    mapper = PathMapper({"/data": "/h/d", "/data/logs": "/h/l", "/tmp": "/h/t"})
    assert mapper("/data/logs/a.log") == "/h/l/a.log"
    assert mapper("/data/inputs x /data") == "/h/d/inputs x /h/d"
    assert mapper("tee -a /data/logs/algorithm.log; cat /tmp/.x") == "tee -a /h/l/algorithm.log; cat /h/t/.x"
    assert mapper("/database /datax http://host/data/x") == "/database /datax http://host/data/x"
    # one pass: a replacement is never rewritten again
    assert PathMapper({"/a": "/a/a"})("/a/b") == "/a/a/b"


async def test_volumes_env_and_termination_message(cluster: EmbeddedCluster) -> None:
    await cluster.create(
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "w-data"}, "spec": {}}
    )
    await cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "w"},
            "data": {"workflow.json": '{"jobId": "w"}', "mode": "fast"},
        }
    )
    await cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "w-s"},
            "stringData": {"secret": "s3cr3t"},
            "data": {"other": base64.b64encode(b"from-data").decode()},
        }
    )
    script = (
        "import json, os, pathlib\n"
        "env = dict(os.environ)\n"
        'doc = json.load(open("/workflow.json"))\n'
        'pathlib.Path("/data/outputs/out.txt").write_text(doc["jobId"] + env["secret"])\n'
        'pathlib.Path(env["OUTPUTS"], "env.json").write_text(json.dumps(env))\n'
        'open("/tmp/scratch", "w").write("x")\n'
        'print("hello from the pod")\n'
        'open(os.environ["TERMINATION_LOG"], "w").write(json.dumps({"ok": True}))\n'
    )
    job = process_job(
        "w-job",
        [PY, "-c", script],
        env=[
            {"name": "OUTPUTS", "value": "/data/outputs"},
            {"name": "MODE_REF", "value": "$(OUTPUTS)/m"},
            {"name": "secret", "valueFrom": {"secretKeyRef": {"name": "w-s", "key": "secret"}}},
            {"name": "other", "valueFrom": {"secretKeyRef": {"name": "w-s", "key": "other"}}},
            {"name": "mode", "valueFrom": {"configMapKeyRef": {"name": "w", "key": "mode"}}},
        ],
        mounts=[
            {"name": "workflow", "mountPath": "/workflow.json", "subPath": "workflow.json"},
            {"name": "data", "mountPath": "/data/outputs", "subPath": "outputs"},
        ],
        volumes=[
            {"name": "workflow", "configMap": {"name": "w"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "w-data"}},
        ],
    )
    os.environ["DEVCLUSTER_TEST_SENTINEL"] = "must-not-leak"
    try:
        await cluster.create(job)
        pod = await finished_pod(cluster, "w-job")
    finally:
        del os.environ["DEVCLUSTER_TEST_SENTINEL"]
    terminated = pod_status(pod)
    assert terminated["exitCode"] == 0, cluster.api.pod_logs
    assert json.loads(terminated["message"]) == {"ok": True}
    runtime = cluster.runtime
    assert isinstance(runtime, ProcessRuntime)
    outputs = runtime.volume_dir(NS, "w-data") / "outputs"
    assert (outputs / "out.txt").read_text() == "ws3cr3t"
    env = json.loads((outputs / "env.json").read_text())
    assert env["OUTPUTS"] == str(outputs)
    assert env["MODE_REF"] == f"{outputs}/m"
    assert (env["secret"], env["other"], env["mode"]) == ("s3cr3t", "from-data", "fast")
    assert "DEVCLUSTER_TEST_SENTINEL" not in env
    assert set(env) - {"OUTPUTS", "MODE_REF", "secret", "other", "mode"} <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "PYTHONUNBUFFERED",
        "TERMINATION_LOG",
        "LC_CTYPE",
    }
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    pod_dir = runtime.pod_dir(NS, pod["metadata"]["name"])
    assert (pod_dir / "tmp" / "scratch").read_text() == "x"
    # kubectl logs: the API server serves what the process printed
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.url}/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log") as r:
            assert "hello from the pod" in await r.text()


async def test_failure_falls_back_to_the_log_tail(cluster: EmbeddedCluster) -> None:
    await cluster.create(process_job("fail-job", ["/bin/sh", "-c", "echo first; echo last words >&2; exit 3"]))
    terminated = pod_status(await finished_pod(cluster, "fail-job"))
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"].strip().endswith("last words")
    await cluster.create(process_job("file-job", ["/bin/sh", "-c", "echo out; exit 4"], policy="File"))
    assert "message" not in pod_status(await finished_pod(cluster, "file-job"))


async def test_missing_secret_or_executable_fails_the_pod(cluster: EmbeddedCluster) -> None:
    await cluster.create(
        process_job(
            "nosecret-job",
            ["/bin/true"],
            env=[{"name": "x", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}],
        )
    )
    terminated = pod_status(await finished_pod(cluster, "nosecret-job"))
    assert terminated["exitCode"] != 0 and 'secret "absent" not found' in terminated["message"]
    await cluster.create(process_job("noexec-job", ["no-such-program-here"]))
    terminated = pod_status(await finished_pod(cluster, "noexec-job"))
    assert terminated["exitCode"] != 0 and "executable file not found" in terminated["message"]


async def test_deadline_kills_the_process_group(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    # (host paths go through env values: in command and args, /tmp/... means the pod's own /tmp)
    await cluster.create(
        process_job(
            "slow-job",
            ["/bin/sh", "-c", 'sleep 60 & echo $! > "$MARKER"; wait'],
            env=[{"name": "MARKER", "value": str(marker)}],
            activeDeadlineSeconds=1,
        )
    )
    job = await cluster.wait_for("job", "slow-job", lambda j: j and (j.get("status") or {}).get("failed"), timeout=30)
    assert job is not None
    reasons = {c["reason"] for c in job["status"]["conditions"]}
    assert "DeadlineExceeded" in reasons
    await assert_dead(int(marker.read_text()))


async def test_deleting_the_job_kills_the_process(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    # ($$ is Kubernetes' escape of $: the shell sees `echo $$`)
    await cluster.create(
        process_job(
            "hang-job",
            ["/bin/sh", "-c", 'echo $$$$ > "$MARKER"; exec sleep 60'],
            env=[{"name": "MARKER", "value": str(marker)}],
        )
    )
    async with asyncio.timeout(30):
        while not marker.exists() or not marker.read_text().strip():
            await asyncio.sleep(0.05)
    await cluster.delete("job", "hang-job")
    assert await cluster.runtime.wait_finished("hang-job", timeout=30) is None
    await assert_dead(int(marker.read_text()))


async def test_a_new_claim_of_a_reused_name_starts_empty(cluster: EmbeddedCluster) -> None:
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "reuse"}, "spec": {}}
    volume = [{"name": "v", "persistentVolumeClaim": {"claimName": "reuse"}}]
    mount = [{"name": "v", "mountPath": "/vol"}]
    await cluster.create(pvc)
    await cluster.create(process_job("w1-job", ["/bin/sh", "-c", "touch /vol/old"], mounts=mount, volumes=volume))
    await finished_pod(cluster, "w1-job")
    await cluster.delete("pvc", "reuse")
    await cluster.create(pvc)
    await cluster.create(process_job("w2-job", ["/bin/sh", "-c", "test ! -e /vol/old"], mounts=mount, volumes=volume))
    assert pod_status(await finished_pod(cluster, "w2-job"))["exitCode"] == 0
