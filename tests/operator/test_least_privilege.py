"""The operator's Role grants exactly what the operator uses (docs/SECURITY.md §7).

One operator runs the scenarios of this suite in one go: success through the
filter stage, configure failures 31 and 32, a timeout, a stop request, a
deletion while running and one while queued (maxJobs), and a rejected
Workflow, with leader election on (kubernetes/operator.yml). Every request it
made is read from the embedded API server's request log and turned into the (apiGroup, resource, verb) a real API server
would authorize (see ``rbac``). The Role in kubernetes/binding.yml must grant
all of them and nothing else. Each other operator test also checks, when it
ends, that its requests were granted (conftest: operator_stays_within_its_role).
"""

from __future__ import annotations

import json

import rbac
from conftest import OperatorFactory, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    make_workflow,
    patch_spec,
    stage_of,
    status,
    wait_code,
    wait_gone,
    wait_terminal,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome


def _publishes(runtime: TimedRuntime, name: str) -> None:
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))


def _configure_fails(runtime: TimedRuntime, name: str, code: int) -> None:
    runtime.script(
        f"{name}-configure-job",
        Outcome(exit_code=1, message=json.dumps({"statusCode": code, "message": f"provisioning {code}"})),
    )


def _hangs(runtime: TimedRuntime, name: str) -> None:
    runtime.script(f"{name}-algorithm-job", Outcome(hang=True))


def _invalid_did(body: dict) -> None:
    stage_of(body)["input"][0]["id"] = "not a DID"


async def run_scenarios(operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime) -> None:
    """Every path the operator takes through the API, on one operator, two workflows admitted at a time."""
    for name in ("wf-ok", "wf-c31", "wf-c32", "wf-timeout", "wf-stop", "wf-del-run", "wf-del-queued"):
        _publishes(runtime, name)
    _configure_fails(runtime, "wf-c31", 31)
    _configure_fails(runtime, "wf-c32", 32)
    for name in ("wf-timeout", "wf-stop", "wf-del-run"):
        _hangs(runtime, name)
    # With leader election on, as in the Deployment: the Lease's verbs are used too.
    async with operator(maxJobs="2", FILTERING_CONTAINER="oceanprotocol/filter:1.0", LEADER_ELECTION="true"):
        for pair in (("wf-ok", "wf-c31"), ("wf-c32", "wf-timeout")):
            for name in pair:
                await cluster.create(make_workflow(name, maxtime=2 if name == "wf-timeout" else None))
            for name in pair:
                await wait_terminal(cluster, name)
        await cluster.create(make_workflow("wf-stop"))
        await cluster.create(make_workflow("wf-del-run"))
        await runtime.wait_started("wf-stop-algorithm-job", timeout=60)
        await runtime.wait_started("wf-del-run-algorithm-job", timeout=60)
        await cluster.create(make_workflow("wf-del-queued"))
        queued = await wait_code(cluster, "wf-del-queued", 1)
        assert status(queued).get("phase") == "Queued", status(queued)
        await cluster.delete("wf", "wf-del-queued")
        await wait_gone(cluster, "wf", "wf-del-queued")
        await cluster.delete("wf", "wf-del-run")
        await wait_gone(cluster, "wf", "wf-del-run")
        await wait_code(cluster, "wf-stop", 40)
        await patch_spec(cluster, "wf-stop", {"stopRequested": True})
        await cluster.create(make_workflow("wf-invalid", mutate=_invalid_did))
        for name in ("wf-stop", "wf-invalid"):
            await wait_terminal(cluster, name)
        for name in ("wf-ok", "wf-c31", "wf-c32", "wf-timeout", "wf-stop", "wf-del-run"):
            await wait_until_clean(cluster, name)
    ends = {
        name: status(await cluster.get("wf", name)).get("phase")
        for name in ("wf-ok", "wf-c31", "wf-c32", "wf-timeout", "wf-stop", "wf-invalid")
    }
    assert ends == {
        "wf-ok": "Succeeded",
        "wf-c31": "Failed",
        "wf-c32": "Failed",
        "wf-timeout": "TimedOut",
        "wf-stop": "Stopped",
        "wf-invalid": "Failed",
    }, ends


async def test_the_role_grants_exactly_what_the_operator_uses(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    await run_scenarios(operator, cluster, runtime)
    used = rbac.requested(list(cluster.request_log), lambda kind: cluster.spec(kind).plural)
    # Its own Secrets are created and deleted by name: any read (get, list, watch)
    # would need a grant that reads every Secret in the namespace.
    secret_verbs = {verb for _, resource, verb, _ in used if resource == "secrets"}
    assert secret_verbs == {"create", "delete"}, secret_verbs
    grants = rbac.granted()
    missing = rbac.refused(used, grants)
    extra = rbac.unused(used, grants)
    assert not missing, f"kubernetes/binding.yml lacks what the operator uses: {rbac.describe(missing)}"
    assert not extra, f"kubernetes/binding.yml grants what the operator never used: {rbac.describe(extra)}"
