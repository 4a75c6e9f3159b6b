"""What a person sees: Kubernetes Events on the Workflow tell its story, its conditions its state."""

from __future__ import annotations

import asyncio

from conftest import OperatorFactory, TimedRuntime
from helpers import make_workflow, wait_terminal
from test_pipeline import run_happy

from operator_engine.devcluster import EmbeddedCluster

STORY = ["Queued", "Started", "Configuring", "Provisioned", "AlgorithmStarted", "AlgorithmFinished", "Finished"]


async def _event_reasons(cluster: EmbeddedCluster, name: str, expected: list[str]) -> list[str]:
    # kopf posts Events from a queue, shortly after the step: wait for the last one.
    async with asyncio.timeout(30):
        while True:
            events = [e for e in await cluster.list("events") if (e.get("involvedObject") or {}).get("name") == name]
            reasons = [e.get("reason") for e in sorted(events, key=lambda e: e["metadata"]["resourceVersion"])]
            if set(expected) <= set(reasons):
                return reasons
            await asyncio.sleep(0.1)


async def test_every_step_posts_an_event_and_the_conditions_say_how_it_ended(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    final = await run_happy(operator, cluster, runtime, name="wf-story")
    # Conditions describe the current state (Kubernetes conventions), not the story: that is in the Events.
    conditions = {c["type"]: c for c in final["status"]["conditions"]}
    assert {t: c["status"] for t, c in conditions.items()} == {
        "Admitted": "True",
        "Running": "False",
        "Succeeded": "True",
        "Failed": "False",
    }
    generation = final["metadata"]["generation"]
    assert all(c["observedGeneration"] == generation for c in conditions.values()), conditions
    assert all(c["reason"] and c["lastTransitionTime"] for c in conditions.values()), conditions
    async with operator():
        reasons = await _event_reasons(cluster, "wf-story", STORY)
    # Events carry their own timestamps (kubectl describe sorts by them); kopf posts
    # them from a queue, so only the set and the count are the operator's promise.
    assert sorted(r for r in reasons if r in STORY) == sorted(STORY)


async def test_a_rejected_workflow_gets_a_warning_event_naming_the_field(
    operator: OperatorFactory, cluster: EmbeddedCluster
) -> None:
    body = make_workflow("wf-rejected")
    body["spec"]["metadata"]["stages"][0]["algorithm"]["container"].pop("image")
    async with operator():
        await cluster.create(body)
        await wait_terminal(cluster, "wf-rejected")
        await _event_reasons(cluster, "wf-rejected", ["Rejected"])
    events = [e for e in await cluster.list("events") if e.get("reason") == "Rejected"]
    assert events[0]["type"] == "Warning"
    assert "spec.metadata.stages[0].algorithm.container.image: required" in events[0]["message"]
