"""The engine's memory of each workflow (`engine.Known`), through the real operator.

What the engine keeps to spare reads (its own writes' resourceVersions and
status fields, the body of a running workflow) must never make it act on an
old body, skip a change someone else made, or grow with the queue.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import History, OperatorFactory, TimedRuntime
from helpers import (
    NS,
    PUBLISH_RESULT,
    make_workflow,
    status,
    wait_gone,
    wait_terminal,
    wait_until,
    wait_until_clean,
    wait_workflow,
)

from operator_engine import config as config_module
from operator_engine.devcluster import EmbeddedCluster, Outcome
from operator_engine.engine import Engine
from operator_engine.kube import Kube, new_api_client


def _settled(obj: dict[str, Any] | None) -> bool:
    st = status(obj)
    return bool(st.get("cleanedUp")) and {"start", "stop"} <= set(st.get("notifications") or {})


async def _on_engine_loop(engine: Any, coro: Any) -> Any:
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, engine.kube._loop))


async def test_a_late_body_after_the_sweep_forgot_a_settled_workflow_recreates_no_job(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    """The backstop's sweep forgets a settled workflow whatever the watch has delivered so far.

    A body the watch delivers after that (a loaded kopf lags its watch), of a
    workflow admitted and not settled, is read again before it is acted on:
    a Publishing body trusted as it is would create the publish Job again, for
    a workflow that finished and was cleaned up.
    """
    name = "wf-late-body"
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    async with operator() as op:
        await cluster.create(make_workflow(name))
        await wait_terminal(cluster, name)
        await wait_until_clean(cluster, name)
        await wait_workflow(cluster, name, _settled, what="settled (cleaned up, both notifications recorded)")
        await history.sync()
        publishing = next(c.object for c in history.workflow_states(name) if status(c.object).get("statusCode") == 60)
        engine = op.memo.live.engine
        # The backstop's pass lists the Workflow settled and forgets it ...
        assert await _on_engine_loop(engine, engine.sweep(NS))
        # ... and the watch then delivers, late, a body from before the end.
        engine.kube._loop.call_soon_threadsafe(engine.reconcile, NS, name, copy.deepcopy(publishing))
        await wait_until(lambda: len(engine.queue) == 0, what="the queue to drain")
        await history.sync()
    added = [c for c in history.added("jobs") if c.name == f"{name}-publish-job"]
    assert len(added) == 1, f"the publish Job was created {len(added)} times"


async def test_the_engine_keeps_no_copy_of_a_queued_workflows_body(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    """`Known.body` serves a Job's end: only a running workflow's body is kept (at most maxJobs of them).

    Queued workflows are not bounded by maxJobs, and a workflow document may
    be large (rawcode): keeping theirs would grow the memory with the backlog.
    """
    runtime.script("wf-runs-algorithm-job", Outcome(hang=True))
    rawcode = "print('x')  # " + "x" * 200_000

    def big(body: dict[str, Any]) -> None:
        algorithm = body["spec"]["metadata"]["stages"][0]["algorithm"]
        algorithm.pop("url", None)
        algorithm["rawcode"] = rawcode

    queued = [f"wf-queued-{i}" for i in range(3)]
    async with operator(maxJobs=1) as op:
        await cluster.create(make_workflow("wf-runs"))
        await wait_workflow(cluster, "wf-runs", lambda o: status(o).get("statusCode") == 40, what="code 40")
        for name in queued:
            await cluster.create(make_workflow(name, mutate=big))
        for name in queued:
            await wait_workflow(cluster, name, lambda o: status(o).get("phase") == "Queued", what="Queued")
        engine = op.memo.live.engine

        async def kept() -> dict[str, int]:
            return {
                name: len(json.dumps(known.body))
                for (_, name), known in engine._known.items()
                if name in queued and known.body is not None
            }

        sizes = await _on_engine_loop(engine, kept())
    assert not sizes, f"bytes of Queued workflows' bodies kept in memory: {sizes}"


async def test_a_deletion_is_acted_on_when_a_status_value_differs_from_the_one_written(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    """A status value that differs from the one the engine wrote never makes it skip a deletion.

    A value the API server stores differently from what was sent (a
    structural schema's pruning, a lone surrogate turned into U+FFFD, a
    number beyond int64), or a second writer (a former leader), makes later
    bodies look older than the engine's last write. Only the echoes of the
    engine's own writes (by resourceVersion) are skipped: such a body is read
    again, and a deletion is acted on at once, not when the backstop (set
    long here) comes.
    """
    name = "wf-normalized"
    runtime.script(f"{name}-algorithm-job", Outcome(hang=True))
    async with operator(OPERATOR_BACKSTOP_SECONDS=600):
        await cluster.create(make_workflow(name))
        await wait_workflow(cluster, name, lambda o: status(o).get("statusCode") == 40, what="code 40")
        # The status as stored differs in one value from what the operator wrote.
        cluster.api.update(
            cluster.spec("wf"),
            cluster.namespace,
            name,
            lambda old: {**old, "status": {**old["status"], "statusText": old["status"]["statusText"] + " "}},
            status=True,
        )
        await cluster.delete("wf", name)
        await wait_gone(cluster, "wf", name, timeout=20)


async def test_an_admission_whose_answer_was_lost_counts_as_admitted(
    cluster: EmbeddedCluster, runtime: TimedRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission writes on the body it listed, conditioned on its resourceVersion.

    When the answer to that write is lost, the client's retry meets the
    write itself (409); the Workflow read again is admitted: by this pass,
    which counts it (the environment ConfigMap's currentJobs, the census).
    Here the listed body is one from before an admission that went through.
    """
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    runtime.script("wf-lost-answer-algorithm-job", Outcome(hang=True))
    config = config_module.load({"OPERATOR_NAMESPACE": cluster.namespace, "maxJobs": "1"})
    engine = Engine(config, Kube(await new_api_client()))
    try:
        await cluster.create(make_workflow("wf-lost-answer"))
        engine.reconcile(cluster.namespace, "wf-lost-answer")
        listed = await wait_workflow(
            cluster, "wf-lost-answer", lambda o: status(o).get("phase") == "Queued", what="Queued"
        )
        assert await engine._admit_one(cluster.namespace, "wf-lost-answer", copy.deepcopy(listed))
        # The same pick again, on the body listed before: a Conflict, a read, and it is admitted already.
        assert await engine._admit_one(cluster.namespace, "wf-lost-answer", copy.deepcopy(listed))
        stored = await cluster.get("wf", "wf-lost-answer")
        assert status(stored)["dateStarted"] and status(stored)["phase"] == "Running"
    finally:
        await engine.close()
