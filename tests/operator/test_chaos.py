"""Chaos: hard kills at random moments while dozens of workflows run (issue 9, item 6; docs/contract.md §4).

The operator process is killed with SIGKILL at seeded random moments and
started again, while 60 workflows go through their stages. At the end every
workflow has succeeded, no Job was created twice, and the receiver saw
exactly one idempotency key per notification (a start and a stop for each
workflow). A POST the receiver had accepted but whose record a kill cut off
is sent again by the next process, with the same key: those raw duplicates
are allowed only where a kill cut the record off, and must stay rare.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time

import pytest
from conftest import ProcessFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    check_payload,
    creation_counts,
    deliveries_cut_off,
    is_terminal,
    make_workflow,
    resource_of,
    status,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome
from operator_engine.notifier import WINDOW

SEED = 9_06_2026
WORKFLOWS = 60
KILLS = 8
MAX_JOBS = 6
KINDS = ("start", "stop")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_hard_kills_at_random_moments_each_notification_has_one_key_and_duplicates_are_rare(
    operator_process: ProcessFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
) -> None:
    rng = random.Random(SEED)
    names = [f"wf-chaos-{i:02d}" for i in range(WORKFLOWS)]
    publish = json.dumps(PUBLISH_RESULT)
    for name in names:
        for stage in ("configure", "algorithm", "publish"):
            runtime.script(
                f"{name}-{stage}-job",
                Outcome(duration=rng.uniform(0.3, 1.5), message=publish if stage == "publish" else None),
            )
    bodies = {name: make_workflow(name) for name in names}
    proc = await operator_process(maxJobs=MAX_JOBS, OPERATOR_BACKSTOP_SECONDS="2")
    for name in names:
        await cluster.create(bodies[name])

    cuts: collections.Counter[tuple[str, str]] = collections.Counter()  # records a kill cut off, by notification
    in_flight_at_kill: list[int] = []
    cut_at_kill: list[int] = []
    posts_at_cut: dict[tuple[str, str], int] = {}
    for _ in range(KILLS):
        # The chaos schedule itself (not a wait for a condition): the next kill, 2 to 4 s into this process's life.
        await asyncio.sleep(rng.uniform(2.0, 4.0))
        proc.kill()
        workflows = [await cluster.get("wf", name) for name in names]
        in_flight_at_kill.append(sum(1 for w in workflows if not is_terminal(w)))
        # A record cut off anew: of a POST the receiver accepted since the notification's last cut.
        cut = [
            (name, kind)
            for name, kind in await deliveries_cut_off(cluster, receiver, names)
            if len(receiver.accepted(f"/{kind}", name)) > posts_at_cut.get((name, kind), 0)
        ]
        for name, kind in cut:
            cuts[(name, kind)] += 1
            posts_at_cut[(name, kind)] = len(receiver.accepted(f"/{kind}", name))
        cut_at_kill.append(len(cut))
        await proc.start()

    async def all_done() -> bool:
        for name in names:
            workflow = await cluster.get("wf", name)
            st = status(workflow)
            if not is_terminal(workflow) or set(st.get("notifications") or {}) != set(KINDS):
                return False
        return True

    deadline = time.monotonic() + 400
    while not await all_done():
        if time.monotonic() > deadline:
            left = [(n, status(await cluster.get("wf", n))) for n in names]
            left = [(n, s.get("phase"), s.get("notifications")) for n, s in left if s.get("phase") != "Succeeded"]
            raise AssertionError(f"not all workflows ended and were notified within 400 s: {left[:10]}")
        await asyncio.sleep(0.2)
    await proc.stop()
    await receiver.idle()

    # Every workflow succeeded, no Job was created twice, no pod ran twice.
    finals = [status(await cluster.get("wf", name)) for name in names]
    phases = collections.Counter(final.get("phase") for final in finals)
    assert phases == {"Succeeded": WORKFLOWS}, phases
    jobs = {key: n for key, n in creation_counts(cluster, ("jobs",)).items()}
    assert len(jobs) == 3 * WORKFLOWS, len(jobs)
    twice = {key: n for key, n in jobs.items() if n > 1}
    assert not twice, f"Jobs created more than once: {twice}"
    ran_twice = {job: n for job, n in runtime.runs.items() if n > 1}
    assert not ran_twice, f"pods run more than once: {ran_twice}"

    # One idempotency key per notification, the same in the header and the body, derived from the uid.
    uids = {name: (await cluster.get("wf", name))["metadata"]["uid"] for name in names}
    records = receiver.all()
    raw = collections.Counter((r.body["jobId"], r.path.strip("/")) for r in records)
    keys = collections.Counter(r.key for r in records)
    duplicated = {key: n for key, n in raw.items() if n > 1}
    windows = sorted(record_delays(cluster, receiver, set(duplicated)))
    print(
        f"\nchaos: {WORKFLOWS} workflows, {KILLS} kills (workflows in flight at each: {in_flight_at_kill}, "
        f"records each cut off: {cut_at_kill}); "
        f"receiver: {len(records)} POSTs, {len(keys)} distinct keys, {len(records) - len(keys)} duplicate(s) "
        f"{duplicated}; records cut off by a kill: {sorted(cuts)}; from the receiver's answer to the record of "
        f"the result (the crash window): median {windows[len(windows) // 2] * 1000:.0f} ms, "
        f"p95 {windows[int(len(windows) * 0.95)] * 1000:.0f} ms, max {windows[-1] * 1000:.0f} ms"
    )
    for record in records:
        assert record.status == 200, record
        kind = record.path.strip("/")
        name = record.body["jobId"]
        check_payload(record.body, bodies[name])
        assert record.key == record.body.get("idempotencyKey") == f"{uids[name]}:{kind}", record
    expected = {(name, kind) for name in names for kind in KINDS}
    assert set(raw) == expected, f"not notified: {sorted(expected - set(raw))[:10]}"
    assert len(keys) == len(expected), (len(keys), len(expected))
    # A copy only where a kill fell between the receiver's answer and the record (one more POST per such kill).
    unexplained = {key: n for key, n in duplicated.items() if n > 1 + cuts[key]}
    assert not unexplained, (unexplained, sorted(cuts))
    # And rare: a kill cuts off at most notifier.WINDOW records (one), so at most one copy per kill.
    assert max(cut_at_kill) <= WINDOW, cut_at_kill
    assert len(records) - len(keys) <= KILLS * WINDOW, (len(records), len(keys), duplicated)
    # The kills fell while workflows ran (else this test would test nothing).
    assert sum(1 for n in in_flight_at_kill if n > 0) >= KILLS // 2, in_flight_at_kill


def record_delays(cluster: EmbeddedCluster, receiver: Receiver, leave_out: set[tuple[str, str]]) -> list[float]:
    """Seconds from each notification's accepted POST to the API server's answer to its record: the crash window."""
    recorded_at: dict[tuple[str, str], float] = {}
    for record in list(cluster.request_log):
        plural, name, sub = resource_of(record)
        if record.method == "PATCH" and plural == "workflows" and sub == "status" and record.status == 200:
            for kind in (record.body or {}).get("status", {}).get("notifications") or {}:
                recorded_at.setdefault((str(name), kind), record.time)
    delays = []
    for post in receiver.all():
        key = (post.body["jobId"], post.path.strip("/"))
        if key not in leave_out and key in recorded_at:
            delays.append(max(0.0, recorded_at[key] - post.time))
    return delays
