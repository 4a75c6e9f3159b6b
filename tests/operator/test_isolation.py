"""One bad Workflow never stops the others (docs/SECURITY.md §4).

Workflows the operator cannot understand, or whose handling raises, are
created first, then a valid one; with maxJobs=1 and the backstop timer far
away, the valid one must still run to Succeeded while each bad one ends
Failed with a one-line message. Before the fix, the deep Workflow never got a
status, and admission (which never overtakes an older unchecked workflow)
kept every later one Queued.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import OperatorFactory, ProcessFactory, Receiver, TimedRuntime
from helpers import PUBLISH_RESULT, created, make_workflow, stage_of, status, wait_terminal, wait_workflow

from operator_engine import config as config_module
from operator_engine.config import PACKAGED_TEMPLATES_DIR
from operator_engine.devcluster import EmbeddedCluster, Outcome
from operator_engine.engine import Engine
from operator_engine.kube import Kube, new_api_client

# Names sort in creation order (the API server's timestamps have one-second resolution).
DEEP, DDO, CRASH, VALID = "wf-a-deep", "wf-b-ddo", "wf-c-crash", "wf-z-valid"
DEPTH = 300  # deeper than the serializers' own limits (pydantic stops at 255 levels)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def ddo_with_attributes(name: str, attributes: Any) -> dict[str, Any]:
    """A 2019-shape Workflow whose Metadata service's `attributes` is `attributes`."""
    body = make_workflow(name)
    body["spec"]["metadata"] = {"service": [{"index": 0, "type": "Metadata", "attributes": attributes}]}
    return body


def templates_with_a_bug(tmp_path: Path) -> Path:
    """The packaged templates plus a provider's annotation that assumes job ids of the form `<org>-<team>-<id>`.

    It passes the start-up checks (every value goes through `| j`; a job id
    without '-' skips it) and renders for `wf-z-valid`; for a job id with one
    '-' the index is undefined and rendering raises, as a real template bug
    would, for that workflow only.
    """
    folder = tmp_path / "templates"
    shutil.copytree(PACKAGED_TEMPLATES_DIR, folder)
    configmap = folder / "configmap.yaml.j2"
    text = configmap.read_text()
    configmap.write_text(
        text.replace(
            "  labels: {{ labels | j }}\n",
            "  labels: {{ labels | j }}\n"
            '{% if "-" in labels.workflow %}\n'
            '  annotations: {example.com/team: {{ labels.workflow.split("-")[2] | j }}}\n'
            "{% endif %}\n",
        )
    )
    return folder


async def test_unreadable_and_crashing_workflows_end_failed_and_never_hold_the_queue(
    operator: OperatorFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    runtime.script(f"{VALID}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    deep = make_workflow(DEEP, mutate=lambda b: stage_of(b)["output"].__setitem__("deep", nested(DEPTH)))
    ddo = ddo_with_attributes(DDO, ["workflow", {"stages": []}])
    crash = make_workflow(CRASH, mutate=lambda b: b["metadata"]["labels"].__setitem__("workflow", "wf-crash"))
    valid = make_workflow(VALID)
    async with operator(
        maxJobs="1", OPERATOR_BACKSTOP_SECONDS="3600", TEMPLATES_DIR=str(templates_with_a_bug(tmp_path))
    ):
        for body in (deep, ddo, crash, valid):
            await cluster.create(body)
        good = status(await wait_terminal(cluster, VALID, timeout=90))
        bad = {name: status(await wait_terminal(cluster, name, timeout=30)) for name in (DEEP, DDO, CRASH)}
        await receiver.wait("/stop", VALID)
    assert good["phase"] == "Succeeded", good
    for name, field in (
        (DEEP, "spec.metadata.stages[0].output.deep.a.a"),
        (DDO, "spec.metadata.service[0].attributes: must be an object"),
    ):
        message = bad[name].get("message") or ""
        assert bad[name]["phase"] == "Failed" and bad[name]["statusCode"] == 70, bad[name]
        assert field in message and "\n" not in message, f"{name}: {message!r}"
        assert created(cluster, "jobs", name) == [], f"{name} must create no Job"
    assert "nested deeper than" in bad[DEEP]["message"]
    crashed = bad[CRASH]
    assert crashed["phase"] == "Failed" and crashed["statusCode"] == 70, crashed
    assert crashed["message"].startswith("internal error ("), crashed["message"]  # the exception's type
    assert "\n" not in crashed["message"]
    failed = next(c for c in crashed.get("conditions") or [] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InternalError", crashed
    assert await cluster.list("jobs", {"app": CRASH}) == [], "the crashed workflow must be cleaned up"
    log = capfd.readouterr().err
    assert log.count(f"Workflow {CRASH}: unexpected error") == 1, "the traceback is logged once"
    assert "Traceback (most recent call last)" in log


async def test_a_workflow_as_deep_as_a_real_api_server_stores_is_rejected_and_others_run(
    operator_process: ProcessFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    """Go's JSON limit (10000 levels) is far beyond Python's default (about 1000): reading must not fail.

    The operator runs as its own process: in this one the embedded API server
    has raised the recursion limit already. (The API server's own limit is
    tested in tests/devcluster/test_json_depth.py.)
    """
    runtime.script(f"{VALID}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    proc = await operator_process(maxJobs="1", OPERATOR_BACKSTOP_SECONDS="3600")
    await cluster.create(make_workflow(DEEP, mutate=lambda b: stage_of(b)["output"].__setitem__("deep", nested(9_990))))
    await cluster.create(make_workflow(VALID))
    good = status(await wait_terminal(cluster, VALID, timeout=90, context=lambda: proc.log()[-3000:]))
    bad = status(await wait_terminal(cluster, DEEP, timeout=30))
    assert good["phase"] == "Succeeded", good
    assert bad["phase"] == "Failed" and "nested deeper than" in bad["message"], bad
    assert "spec.metadata.stages[0].output.deep.a" in bad["message"] and "\n" not in bad["message"]


async def test_the_backstop_pass_goes_on_past_a_workflow_whose_handling_fails(
    cluster: EmbeddedCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine alone, without kopf's watches, so that only the backstop moves workflows.

    The API server fails every read of one Workflow (the embedded server's own
    fault injection, as a real one would under an etcd problem with one key);
    the backstop pass must still reach the Workflow after it.
    """
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    config = config_module.load({"OPERATOR_NAMESPACE": cluster.namespace, "maxJobs": "1"})
    engine = Engine(config, Kube(await new_api_client(), attempts=2, base_delay=0.01, max_delay=0.01))
    await cluster.create(make_workflow("wf-a-unreadable"))
    await cluster.create(make_workflow("wf-b-fine"))
    cluster.faults.inject(rate=1.0, statuses=(500,), methods=("GET",), path_contains="/workflows/wf-a-unreadable")
    engine.start_backstop(cluster.namespace, 0.2)
    try:
        fine = await wait_workflow(
            cluster,
            "wf-b-fine",
            lambda o: status(o).get("statusCode") is not None,
            timeout=30,
            what="a status from the backstop",
        )
    finally:
        cluster.faults.clear()
        await engine.close()
    assert status(fine)["phase"] in ("Queued", "Running"), status(fine)
    assert status(await cluster.get("wf", "wf-a-unreadable")).get("statusCode") is None


async def test_a_workflow_that_cannot_even_be_ended_failed_does_not_hold_the_queue(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    """The API server refuses every write to the oldest Workflow (as an admission webhook could).

    It can get neither its finalizer nor any status, so it stays without a
    statusCode: admission, which never overtakes an older unchecked
    workflow, must leave it out rather than keep the newer one Queued.
    """
    stuck, later = "wf-a-stuck", "wf-b-later"
    runtime.script(f"{later}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    cluster.faults.inject(rate=1.0, statuses=(422,), methods=("PATCH", "PUT"), path_contains=f"/workflows/{stuck}")
    try:
        async with operator(maxJobs="1", OPERATOR_BACKSTOP_SECONDS="3600"):
            await cluster.create(make_workflow(stuck))
            await cluster.create(make_workflow(later))
            good = status(await wait_terminal(cluster, later, timeout=90))
            await receiver.wait("/stop", later)
    finally:
        cluster.faults.clear()
    assert good["phase"] == "Succeeded", good
    assert status(await cluster.get("wf", stuck)).get("statusCode") is None


async def test_the_engine_keeps_nothing_of_a_workflow_once_it_is_settled_or_deleted(
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-workflow memory goes with the workflow: nothing grows with the number of workflows ever run.

    The engine alone (its backstop moves the workflows), so that its memory
    can be looked at: what it wrote, notifications in flight or delivered,
    crashes, the work queue's entries, admission's exclusions.
    """
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    names = [f"wf-mem-{i}" for i in range(4)]
    for name in names:
        runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    config = config_module.load(
        {
            "OPERATOR_NAMESPACE": cluster.namespace,
            "maxJobs": "2",
            "NOTIFY_START_URL": receiver.start_url,
            "NOTIFY_STOP_URL": receiver.stop_url,
        }
    )
    engine = Engine(config, Kube(await new_api_client()))
    for name in names:
        await cluster.create(make_workflow(name))
    engine.start_backstop(cluster.namespace, 0.2)
    try:
        for name in names[:3]:
            await wait_workflow(
                cluster,
                name,
                lambda o: status(o).get("cleanedUp") and len(status(o).get("notifications") or {}) == 2,
                timeout=90,
                what="settled",
            )
        await cluster.delete("wf", names[3])  # deleted while it runs or waits
        await cluster.wait_for("wf", names[3], lambda o: o is None, timeout=60)
        await wait_memory_empty(engine)
    finally:
        await engine.close()
    for name in names[:3]:
        assert status(await cluster.get("wf", name))["phase"] == "Succeeded", name


async def wait_memory_empty(engine: Engine) -> None:
    """Until the backstop has seen every workflow settled or gone (a few passes)."""

    def kept() -> dict[str, Any]:
        return {
            "known": dict(engine._known),
            "notifications in flight": engine.notifier.in_flight,
            "crashed": set(engine._crashed),
            "unadmittable": set(engine.admission._unadmittable),
            "queue": len(engine.queue),
            "finalizing": dict(engine._finalizing),
        }

    try:
        async with asyncio.timeout(30):
            while any(kept().values()):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"the engine still keeps {kept()}") from None
