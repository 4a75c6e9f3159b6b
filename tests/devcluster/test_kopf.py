"""A tiny real kopf operator sees WorkFlow creations and Job status changes made by the job controller."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from operator_engine.devcluster import EmbeddedCluster

from .helpers import job_manifest, workflow_manifest


async def test_kopf_sees_workflow_creation_and_job_status(cluster: EmbeddedCluster) -> None:
    created: asyncio.Queue[str] = asyncio.Queue()
    succeeded: asyncio.Queue[str] = asyncio.Queue()
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True
        settings.posting.enabled = False
        settings.watching.server_timeout = 5

    @kopf.on.create("oceanprotocol.com", "v1alpha", "workflows", registry=registry)
    async def on_workflow(name: str, **_: Any) -> None:
        created.put_nowait(name)

    @kopf.on.field("batch", "v1", "jobs", field="status.succeeded", registry=registry)
    async def on_job(name: str, new: Any, **_: Any) -> None:
        if new:
            succeeded.put_nowait(name)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.url, insecure=True)

    stop = asyncio.get_running_loop().create_future()
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry, standalone=True, namespaces=["ocean-compute"], clusterwide=False, stop_flag=stop
        )
    )
    try:
        await cluster.create(workflow_manifest("wf1"))
        await cluster.create(job_manifest("wf1-algorithm-job"))
        async with asyncio.timeout(30):
            assert await created.get() == "wf1"
            assert await succeeded.get() == "wf1-algorithm-job"
    finally:
        stop.set_result(None)
        await asyncio.wait_for(operator, 30)
