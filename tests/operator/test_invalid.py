"""Invalid Workflows end Failed naming the field, create no Job, and others go on (docs/contract.md §1.1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import OperatorFactory, Receiver, TimedRuntime
from helpers import PUBLISH_RESULT, created, make_workflow, stage_of, status, wait_terminal

from operator_engine.devcluster import EmbeddedCluster, Outcome

Breaker = Callable[[dict[str, Any]], Any]

# kind -> (workflow name, how to break it, the field the message must name)
CASES: dict[str, tuple[str, Breaker, str]] = {
    "input-did-not-a-did": (
        "wf-bad-did",
        lambda b: stage_of(b)["input"][0].__setitem__("id", "../../etc"),
        "spec.metadata.stages[0].input[0].id",
    ),
    "algorithm-did-with-slash": (
        "wf-bad-algo-did",
        lambda b: stage_of(b)["algorithm"].__setitem__("id", "did:op:abc/def"),
        "spec.metadata.stages[0].algorithm.id",
    ),
    "image-with-newline": (
        "wf-bad-image",
        lambda b: stage_of(b)["algorithm"]["container"].__setitem__("image", "python\nkind: Pod"),
        "spec.metadata.stages[0].algorithm.container.image",
    ),
    "missing-image": (
        "wf-no-image",
        lambda b: stage_of(b)["algorithm"]["container"].pop("image"),
        "spec.metadata.stages[0].algorithm.container.image",
    ),
    "name-too-long": ("w" * 50, lambda b: None, "metadata.name"),
    "two-stages": (
        "wf-two-stages",
        lambda b: b["spec"]["metadata"]["stages"].append(dict(stage_of(b), index=1)),
        "spec.metadata.stages",
    ),
    "maxtime-not-a-number": (
        "wf-bad-maxtime",
        lambda b: stage_of(b)["compute"].__setitem__("maxtime", "forever"),
        "spec.metadata.stages[0].compute.maxtime",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
async def test_invalid_workflow_fails_naming_the_field_without_jobs_while_others_run(
    kind: str, operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    bad_name, breaker, field = CASES[kind]
    good_name = "wf-valid"
    runtime.script(f"{good_name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator():
        await cluster.create(make_workflow(bad_name, mutate=breaker))
        await cluster.create(make_workflow(good_name))
        bad = status(await wait_terminal(cluster, bad_name))
        good = status(await wait_terminal(cluster, good_name))
        await receiver.wait("/stop", good_name)
    assert bad["phase"] == "Failed", bad
    assert bad["statusCode"] == 70, bad
    assert field in (bad.get("message") or ""), f"the message does not name {field}: {bad.get('message')!r}"
    assert created(cluster, "jobs", bad_name) == [], "an invalid Workflow must never create a Job"
    assert await cluster.list("jobs", {"app": bad_name}) == [] if len(bad_name) <= 63 else True
    assert good["phase"] == "Succeeded", good
