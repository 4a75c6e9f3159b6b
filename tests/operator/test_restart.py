"""Crash safety: a hard kill at a stage boundary, a restart, and the workflow goes on."""

from __future__ import annotations

import json

import pytest
from conftest import History, ProcessFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    TEST_KEY,
    assert_notified_once,
    check_payload,
    creation_counts,
    deliveries_cut_off,
    is_subsequence,
    make_workflow,
    status,
    wait_code,
    wait_terminal,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome

# The stage boundary to kill at, and which stage to make slow so that the kill lands inside it.
BOUNDARIES = {
    10: None,  # admitted, start notification on its way or sent, children not yet all there
    20: "configure",
    30: "algorithm",
    40: "algorithm",
    60: "publish",
}


@pytest.mark.parametrize("code", sorted(BOUNDARIES), ids=lambda c: f"after-{c}")
async def test_hard_kill_after_stage_boundary_then_restart_completes_without_duplicates(
    code: int,
    operator_process: ProcessFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
    history: History,
) -> None:
    name = f"wf-restart-{code}"
    slow = BOUNDARIES[code]
    publish_message = json.dumps(PUBLISH_RESULT)
    for stage in ("configure", "algorithm", "publish"):
        duration = 2.0 if stage == slow else 0.0
        runtime.script(
            f"{name}-{stage}-job", Outcome(duration=duration, message=publish_message if stage == "publish" else None)
        )
    body = make_workflow(name)
    proc = await operator_process(OPERATOR_BACKSTOP_SECONDS="2")
    await cluster.create(body)
    await wait_code(cluster, name, code, context=lambda: proc.log()[-3000:])
    proc.kill()
    cut_off = await deliveries_cut_off(cluster, receiver, [name])
    await proc.start()
    final = status(await wait_terminal(cluster, name, timeout=90, context=lambda: proc.log()[-3000:]))
    await receiver.wait("/stop", name)
    await wait_until_clean(cluster, name)

    assert final["phase"] == "Succeeded", final
    assert final["statusCode"] == 70, final
    for key, value in PUBLISH_RESULT.items():
        assert final.get(key) == value, (key, final)
    await history.sync()
    codes = history.codes(name)
    assert is_subsequence([10, 20, 30, 40, 60, 70], codes), codes
    assert codes == sorted(codes), f"status codes went backwards: {codes}"

    twice = {key: n for key, n in creation_counts(cluster).items() if n > 1}
    assert not twice, f"children created more than once: {twice}"
    ran_twice = {job: n for job, n in runtime.runs.items() if n > 1}
    assert not ran_twice, f"pods run more than once: {ran_twice}"
    jobs = sorted(n for (plural, n) in creation_counts(cluster) if plural == "jobs")
    assert jobs == sorted(f"{name}-{s}-job" for s in ("algorithm", "configure", "publish")), jobs

    assert_notified_once(receiver, [name], cut_off)
    for payload in receiver.accepted("/start", name) + receiver.accepted("/stop", name):
        check_payload(payload, body)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_operator_log_never_shows_the_secret_or_the_key(
    level: str, operator_process: ProcessFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    name = "wf-logs"
    secret = "do-not-log-this-secret-0123"
    runtime.script(f"{name}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    proc = await operator_process(LOG_LEVEL=level)
    await cluster.create(make_workflow(name, secret=secret))
    await wait_terminal(cluster, name, context=lambda: proc.log()[-3000:])
    await receiver.wait("/stop", name)
    await wait_until_clean(cluster, name)
    await proc.stop()
    log = proc.log()
    assert f"{name}" in log, "the log says nothing about the workflow"
    leaks = [line[:300] for line in log.splitlines() if secret in line]
    assert not leaks, f"the workflow secret appears in {len(leaks)} log line(s), e.g. {leaks[:2]}"
    assert TEST_KEY[2:] not in log, "the private key appears in the operator log"
