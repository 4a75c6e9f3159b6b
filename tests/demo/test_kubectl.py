"""The real kubectl against the embedded API server: printer columns (Table answers) and apply with validation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from operator_engine.demo import sample_workflow_path
from operator_engine.devcluster import EmbeddedCluster
from operator_engine.devcluster.tables import human_duration

from .helpers import KUBECTL, NS, process_job

pytestmark = pytest.mark.skipif(not os.access(KUBECTL, os.X_OK), reason=f"{KUBECTL} is not installed")


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    async with EmbeddedCluster(namespace=NS) as running:
        running.write_kubeconfig(tmp_path / "kubeconfig")
        yield running


async def kubectl(tmp_path: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert b"Warning" not in err, err.decode()
    return out.decode()


async def test_kubectl_apply_validates_and_get_prints_the_workflow_columns(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    # No --validate=false: kubectl finds server-side field validation in /openapi/v3.
    assert "created" in await kubectl(tmp_path, "apply", "-f", str(sample_workflow_path()))
    cluster.api.update(
        cluster.spec("wf"),
        NS,
        "workflow-1",
        lambda o: {
            **o,
            "status": {
                "statusCode": 40,
                "statusText": "Running algorithm",
                "phase": "Running",
                "dateStarted": o["metadata"]["creationTimestamp"],
            },
        },
        status=True,
    )
    lines = (await kubectl(tmp_path, "get", "wf")).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "CODE", "PHASE", "AGE"]
    assert lines[1].split()[:5] == ["workflow-1", "Running", "algorithm", "40", "Running"]
    wide = (await kubectl(tmp_path, "get", "wf", "workflow-1", "-o", "wide")).splitlines()
    assert wide[0].split() == ["NAME", "STATUS", "CODE", "PHASE", "STARTED", "FINISHED", "AGE"]
    assert "40" in wide[1].split()
    # the object itself is unchanged for other output formats
    assert await kubectl(tmp_path, "get", "wf", "workflow-1", "-o", "jsonpath={.status.statusCode}") == "40"
    assert "unchanged" in await kubectl(tmp_path, "apply", "-f", str(sample_workflow_path()))


async def test_other_kinds_get_tables_too(cluster: EmbeddedCluster, tmp_path: Path) -> None:
    await cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"}, "data": {}})
    lines = (await kubectl(tmp_path, "get", "configmaps")).splitlines()
    assert lines[0].split() == ["NAME", "AGE"] and lines[1].split()[0] == "cm1"
    await cluster.create(process_job("j1", ["/bin/true"]))  # the ScriptedRuntime succeeds it at once
    # Done once the Complete condition is there: the count comes first, as on a real cluster (1.31+).
    await cluster.wait_for(
        "job",
        "j1",
        lambda j: j and any(c.get("type") == "Complete" for c in (j.get("status") or {}).get("conditions") or []),
    )
    jobs = (await kubectl(tmp_path, "get", "jobs")).splitlines()
    assert jobs[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert jobs[1].split()[:3] == ["j1", "Complete", "1/1"]
    pods = (await kubectl(tmp_path, "get", "pods")).splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert pods[1].split()[1:4] == ["0/1", "Completed", "0"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{cluster.url}/api/v1/namespaces/{NS}/configmaps",
            headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
        ) as r,
    ):
        table = await r.json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_human_duration_matches_kubernetes() -> None:
    assert [human_duration(s) for s in (5, 119, 150, 600, 3 * 3600 + 60, 30 * 3600, 3 * 86400 + 3600)] == [
        "5s",
        "119s",
        "2m30s",
        "10m",
        "3h1m",
        "30h",
        "3d1h",
    ]
