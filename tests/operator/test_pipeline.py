"""The pipeline of one Workflow, from admission to clean-up (docs/contract.md §1–§4)."""

from __future__ import annotations

import collections
import json

from conftest import History, OperatorFactory, Receiver, TimedRuntime
from helpers import (
    MANAGED_BY,
    PUBLISH_RESULT,
    TEST_ADDRESS,
    check_payload,
    child_names,
    children_of,
    created,
    creation_index,
    creation_posts,
    is_subsequence,
    make_workflow,
    posted_name,
    resource_of,
    status,
    status_codes,
    wait_terminal,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome

W = "wf-happy"


def script_success(runtime: TimedRuntime, name: str) -> None:
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))


async def run_happy(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, name: str = W, **env: str
) -> dict:
    script_success(runtime, name)
    async with operator(**env):
        await cluster.create(make_workflow(name))
        final = await wait_terminal(cluster, name)
        # Clean-up follows the terminal status; wait for it while the operator still runs.
        try:
            await wait_until_clean(cluster, name)
        except AssertionError:
            pass  # the clean-up test reports this; other tests look at what they check
    return final


# ---------------------------------------------------------------- the happy path


async def test_happy_path_creates_children_in_contract_order(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    await run_happy(operator, cluster, runtime)
    names = child_names(W)
    index = {
        key: creation_index(cluster, plural, names[key])
        for key, plural in (
            ("configmap", "configmaps"),
            ("data", "persistentvolumeclaims"),
            ("adminlogs", "persistentvolumeclaims"),
            ("algorithm-secret", "secrets"),
            ("configure", "jobs"),
            ("algorithm", "jobs"),
            ("publish", "jobs"),
        )
    }
    missing = [key for key, position in index.items() if position is None]
    assert not missing, f"never created: {missing}; jobs created: {created(cluster, 'jobs')}"
    for before in ("configmap", "data", "adminlogs", "algorithm-secret"):
        assert index[before] < index["configure"], f"{before} created after the configure Job: {index}"
    assert index["configure"] < index["algorithm"] < index["publish"], index
    assert created(cluster, "jobs", W) == [names["configure"], names["algorithm"], names["publish"]]


async def test_happy_path_status_codes_pass_every_stage(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    await run_happy(operator, cluster, runtime)
    await history.sync()
    codes = history.codes(W)
    assert is_subsequence([10, 20, 30, 40, 60, 70], codes), codes
    assert codes == sorted(codes), f"status codes went backwards: {codes}"
    assert set(codes) <= {1, 10, 20, 30, 40, 60, 70}, codes
    # The request history (what the operator wrote) tells the same story.
    written = status_codes(cluster, W)
    assert is_subsequence([10, 20, 30, 40, 60, 70], written), written
    assert history.phases(W)[-1] == "Succeeded"
    assert "Running" in history.phases(W)


async def test_happy_path_ends_succeeded_with_the_publish_urls(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    final = status(await run_happy(operator, cluster, runtime))
    assert final["phase"] == "Succeeded", final
    assert final["statusCode"] == 70, final
    assert final.get("stopreq", 0) == 0, final
    assert final["statusText"], final
    for key in ("dateCreated", "dateStarted", "dateFinished"):
        assert isinstance(final.get(key), str) and final[key].endswith("Z"), (key, final)
    assert final["dateStarted"] <= final["dateFinished"]
    for key, value in PUBLISH_RESULT.items():
        assert final.get(key) == value, (key, final)


async def test_happy_path_cleans_up_every_child(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    script_success(runtime, W)
    async with operator():
        await cluster.create(make_workflow(W))
        await wait_terminal(cluster, W)
        await wait_until_clean(cluster, W)
    workflow = await cluster.get("wf", W)
    assert workflow is not None, "the Workflow itself must stay: it holds the status"
    assert status(workflow)["phase"] == "Succeeded"


async def test_happy_path_sends_one_signed_start_and_one_stop_notification(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    script_success(runtime, W)
    body = make_workflow(W)
    async with operator():
        await cluster.create(body)
        await wait_terminal(cluster, W)
        await receiver.wait("/stop", W)
        await wait_until_clean(cluster, W)
    starts, stops = receiver.accepted("/start", W), receiver.accepted("/stop", W)
    assert len(starts) == 1, receiver.all()
    assert len(stops) == 1, receiver.all()
    assert len(receiver.all()) == 2, receiver.all()
    for payload in starts + stops:
        check_payload(payload, body)
    start_time = next(r.time for r in receiver.all("/start"))
    stop_time = next(r.time for r in receiver.all("/stop"))
    assert start_time < stop_time
    assert TEST_ADDRESS  # the signer is checked in check_payload


async def test_children_carry_labels_and_owner_reference(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    script_success(runtime, W)
    async with operator(DEBUG_NO_CLEANUP="true"):
        workflow = await cluster.create(make_workflow(W))
        await wait_terminal(cluster, W)
    uid = workflow["metadata"]["uid"]
    components = {f"{W}-configure-job": "configure", f"{W}-algorithm-job": "algorithm", f"{W}-publish-job": "publish"}
    for plural in ("configmaps", "persistentvolumeclaims", "secrets", "jobs"):
        for record in creation_posts(cluster, plural):
            name = posted_name(record)
            if name is None or not name.startswith(W):
                continue
            meta = record.body["metadata"]
            labels = meta.get("labels") or {}
            assert labels.get("app") == W, (name, labels)
            assert labels.get("workflow") == W, (name, labels)
            assert labels.get("app.kubernetes.io/managed-by") == MANAGED_BY, (name, labels)
            owners = meta.get("ownerReferences") or []
            assert any(o.get("uid") == uid and o.get("kind") == "WorkFlow" for o in owners), (name, owners)
            if plural == "jobs":
                assert labels.get("component") == components[name], (name, labels)
                template_labels = record.body["spec"]["template"]["metadata"]["labels"]
                assert template_labels.get("component") == components[name], (name, template_labels)


async def test_debug_no_cleanup_keeps_the_children(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    script_success(runtime, W)
    async with operator(DEBUG_NO_CLEANUP="true"):
        await cluster.create(make_workflow(W))
        await wait_terminal(cluster, W)
        await receiver.wait("/stop", W)
        left = await children_of(cluster, W)
    assert sorted(left.get("jobs", [])) == sorted([f"{W}-configure-job", f"{W}-algorithm-job", f"{W}-publish-job"])
    assert sorted(left.get("persistentvolumeclaims", [])) == [f"{W}-adminlogs", f"{W}-data"]
    assert left.get("configmaps") == [W]


# ---------------------------------------------------------------- configure failures


async def run_failing(operator: OperatorFactory, cluster: EmbeddedCluster, receiver: Receiver, name: str) -> dict:
    """Run one workflow to its end, its stop notification and its clean-up; return its status."""
    async with operator():
        await cluster.create(make_workflow(name))
        final = status(await wait_terminal(cluster, name))
        await receiver.wait("/stop", name)
        await wait_until_clean(cluster, name)
    return final


async def _configure_failure(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver, code: int
) -> None:
    name = f"wf-conf-{code}"
    runtime.script(
        f"{name}-configure-job",
        Outcome(exit_code=1, message=json.dumps({"statusCode": code, "message": f"provisioning {code}"})),
    )
    script_success(runtime, name)
    final = await run_failing(operator, cluster, receiver, name)
    assert final["statusCode"] == code, final
    assert final["phase"] == "Failed", final
    assert final.get("message"), final
    jobs = created(cluster, "jobs", name)
    assert f"{name}-algorithm-job" not in jobs, jobs
    assert jobs == [f"{name}-configure-job", f"{name}-publish-job"], "the logs are still published"
    assert len(receiver.accepted("/start", name)) == 1
    assert len(receiver.accepted("/stop", name)) == 1


async def test_configure_failure_31_keeps_code_and_skips_the_algorithm(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    await _configure_failure(operator, cluster, runtime, receiver, 31)


async def test_configure_failure_32_keeps_code_and_skips_the_algorithm(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    await _configure_failure(operator, cluster, runtime, receiver, 32)


# ---------------------------------------------------------------- algorithm failure


async def test_algorithm_failure_ends_failed_with_its_exit_code_and_publishes(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-algo-fails"
    runtime.script(f"{name}-algorithm-job", Outcome(exit_code=3, logs="Traceback: boom"))
    script_success(runtime, name)
    final = await run_failing(operator, cluster, receiver, name)
    assert final["statusCode"] == 70, final
    assert final["phase"] == "Failed", final
    assert "3" in (final.get("message") or ""), final
    assert final.get("stopreq", 0) == 0, final
    assert created(cluster, "jobs", name) == [f"{name}-configure-job", f"{name}-algorithm-job", f"{name}-publish-job"]


# ---------------------------------------------------------------- the filter stage


async def test_filter_stage_runs_between_algorithm_and_publish_with_filtering_container(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    name = "wf-filter"
    script_success(runtime, name)
    async with operator(FILTERING_CONTAINER="oceanprotocol/filter:1.0"):
        await cluster.create(make_workflow(name))
        final = status(await wait_terminal(cluster, name))
    assert final["phase"] == "Succeeded", final
    assert created(cluster, "jobs", name) == [
        f"{name}-configure-job",
        f"{name}-algorithm-job",
        f"{name}-filter-job",
        f"{name}-publish-job",
    ]
    filter_posts = [r for r in creation_posts(cluster, "jobs") if posted_name(r) == f"{name}-filter-job"]
    containers = filter_posts[0].body["spec"]["template"]["spec"]["containers"]
    assert any(c.get("image", "").startswith("oceanprotocol/filter") for c in containers), containers
    await history.sync()
    codes = history.codes(name)
    assert is_subsequence([10, 20, 30, 40, 50, 60, 70], codes), codes


async def test_a_failed_filter_withholds_the_outputs_but_publishes_the_logs(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    name = "wf-leak"
    script_success(runtime, name)
    runtime.script(f"{name}-filter-job", Outcome(exit_code=3))
    async with operator(FILTERING_CONTAINER="oceanprotocol/filter:1.0"):
        await cluster.create(make_workflow(name))
        final = status(await wait_terminal(cluster, name))
    assert (final["phase"], final["statusCode"]) == ("Failed", 70), final
    assert "filter stage failed with exit code 3; outputs withheld" in final["message"]
    publish_posts = [r for r in creation_posts(cluster, "jobs") if posted_name(r) == f"{name}-publish-job"]
    env = publish_posts[0].body["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "PUBLISH_OUTPUTS", "value": "false"} in env


async def test_no_filter_job_without_filtering_container(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, history: History
) -> None:
    name = "wf-nofilter"
    script_success(runtime, name)
    async with operator():
        await cluster.create(make_workflow(name))
        final = status(await wait_terminal(cluster, name))
    assert final["phase"] == "Succeeded", final
    assert f"{name}-filter-job" not in created(cluster, "jobs", name)
    await history.sync()
    assert 50 not in history.codes(name), history.codes(name)


async def test_a_workflow_without_secret_gets_no_algorithm_secret(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-nosecret"
    script_success(runtime, name)
    body = make_workflow(name, secret=None)
    async with operator():
        await cluster.create(body)
        final = status(await wait_terminal(cluster, name))
        await receiver.wait("/stop", name)
    assert final["phase"] == "Succeeded", final
    assert f"{name}-algorithm-secret" not in created(cluster, "secrets", name)
    for payload in receiver.accepted("/start", name) + receiver.accepted("/stop", name):
        check_payload(payload, body)  # secret: null, still signed


async def test_the_secret_reaches_the_algorithm_only_through_a_secret(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    name = "wf-secret"
    script_success(runtime, name)
    body = make_workflow(name, secret="s3cr3t-value-for-test")
    async with operator(DEBUG_NO_CLEANUP="true"):
        await cluster.create(body)
        await wait_terminal(cluster, name)
    assert f"{name}-algorithm-secret" in created(cluster, "secrets", name)
    for record in creation_posts(cluster, "jobs"):
        if posted_name(record) and posted_name(record).startswith(name):
            assert "s3cr3t-value-for-test" not in json.dumps(record.body), f"secret inline in {posted_name(record)}"
    cm = [r for r in creation_posts(cluster, "configmaps") if posted_name(r) == name]
    assert cm and "s3cr3t-value-for-test" not in json.dumps(cm[0].body), "secret leaked into the ConfigMap"


async def test_a_run_reads_its_workflow_far_less_often_than_it_moves(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    """The body a watch delivers is used when it shows the operator's own writes: no GET per event.

    What is left are reads where no body came with the event: admission's (it
    must see the Workflow as it is now), and one for each Job that ended
    (a Job's event carries the Job, not the Workflow).
    """
    final = await run_happy(operator, cluster, runtime, name="wf-reads")
    assert status(final)["phase"] == "Succeeded"
    gets = [r for r in cluster.request_log if r.method == "GET" and resource_of(r)[:2] == ("workflows", "wf-reads")]
    writes = [r for r in cluster.request_log if r.method == "PATCH" and resource_of(r)[:2] == ("workflows", "wf-reads")]
    assert len(writes) >= 8, len(writes)  # the finalizer, each status step, notifications, clean-up
    # None here, as a rule (sixteen with a read per reconcile, six before the bodies were kept): a Job's
    # end starts from the newest body the operator has, admission writes on the body it listed, and the
    # echoes of the operator's own writes (the engine's and the notifier's) are not looked at again.
    # A Job event that comes after the workflow was settled and forgotten reads it once.
    assert len(gets) <= 2, [r.path for r in gets]


async def test_a_run_deletes_each_child_once_and_lists_pods_once_per_stage_end(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    """The watch's echo of the operator's own status write is not reconciled again.

    Clean-up ran twice per workflow when the echo of a write that came before
    it arrived after the workflow was settled and forgotten; and each stage's
    end listed the pods twice (for the termination message, for the pods that
    may still run). Each echo reconciled would list the Jobs and pods again.
    """
    name = "wf-requests"
    final = await run_happy(operator, cluster, runtime, name=name)
    assert status(final)["phase"] == "Succeeded"
    deletes = collections.Counter(
        r.path for r in cluster.request_log if r.method == "DELETE" and (resource_of(r)[1] or "").startswith(name)
    )
    assert deletes and max(deletes.values()) == 1, deletes

    def lists(plural: str) -> int:
        return sum(
            1
            for r in cluster.request_log
            if r.method == "GET"
            and resource_of(r)[:2] == (plural, None)
            and f"app={name}," in r.query.get("labelSelector", "")
        )

    # Three stage ends (configure, algorithm, publish): one pod list each; a Job event the Job
    # controller sends twice for one end may cost one more.
    assert lists("pods") <= 4, lists("pods")
    assert lists("jobs") <= 6, lists("jobs")
