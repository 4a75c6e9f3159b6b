"""The compute environment ConfigMap with a live currentJobs (docs/contract.md §2.2)."""

from __future__ import annotations

import json

from conftest import History, OperatorFactory, TimedRuntime
from helpers import NS, PUBLISH_RESULT, TEST_ADDRESS, make_workflow, status, wait_terminal, wait_until_clean

from operator_engine.devcluster import EmbeddedCluster, Outcome

CM = "operator-engine-environment"


def current_jobs(cm: dict | None) -> int | None:
    if not cm:
        return None
    return json.loads((cm.get("data") or {}).get("environment.json") or "{}").get("currentJobs")


async def test_environment_configmap_tracks_current_jobs_back_to_zero(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    names = ["wf-env-0", "wf-env-1", "wf-env-2"]
    runtime.script("*-algorithm-job", Outcome(duration=1.0))
    runtime.script("*-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator(maxJobs="2", nCPU="2", ramGB="3", description="test env"):
        await cluster.wait_for("configmap", CM, timeout=30, namespace=NS)
        for name in names:
            await cluster.create(make_workflow(name))
        for name in names:
            assert status(await wait_terminal(cluster, name))["phase"] == "Succeeded"
        for name in names:
            await wait_until_clean(cluster, name)
        cm = await cluster.wait_for("configmap", CM, lambda o: current_jobs(o) == 0, timeout=30, namespace=NS)
    environment = json.loads(cm["data"]["environment.json"])
    assert environment["maxJobs"] == 2, environment
    assert environment["cpuNumber"] == 2 and environment["ramGB"] == 3, environment
    assert environment["consumerAddress"] == TEST_ADDRESS, environment
    assert environment["id"] == NS, environment
    await history.sync()
    seen = [current_jobs(c.object) for c in history.states("configmaps", CM) if c.type != "DELETED"]
    assert max(v for v in seen if v is not None) in (1, 2), f"currentJobs never showed the running jobs: {seen}"
    assert all(v is None or 0 <= v <= 2 for v in seen), seen
