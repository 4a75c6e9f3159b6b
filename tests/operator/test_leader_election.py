"""Two replicas, one active (README.md, Two replicas, one active): a Lease decides which operator acts.

Two operator processes run against one embedded cluster with leader election
on, each with its own holder identity (POD_NAME), which its API client puts
into its User-Agent: the API server's request log says which process made
each write. While 20 workflows run, the leader is killed with SIGKILL; the
standby must take over within 15 s of the kill and carry every workflow to
the end, with no child created twice and each notification sent once (twice
only where the kill cut off the record of a delivery: helpers.deliveries_cut_off). The
readiness endpoint answers 200 on the leader only. A leader cut off from the
API server stops acting before the standby may take the Lease.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from conftest import ProcessFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    Replicas,
    assert_notified_once,
    creation_counts,
    deliveries_cut_off,
    is_terminal,
    make_workflow,
    readiness,
    resource_of,
    status,
    wait_readiness,
    wait_terminal,
    wait_until,
    wait_until_clean,
)

from operator_engine.devcluster import EmbeddedCluster, Outcome, RequestRecord
from operator_engine.kube import new_api_client
from operator_engine.leader import LEASE_NAME, LeaderElector

WORKFLOWS = [f"wf-ha-{i:02d}" for i in range(20)]
TAKEOVER_LIMIT = 15.0
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def acting_writes(cluster: EmbeddedCluster) -> list[RequestRecord]:
    """Successful writes to workflows and jobs: what only an acting operator does."""
    out = []
    for record in list(cluster.request_log):
        plural = resource_of(record)[0]
        if record.method in WRITES and plural in ("workflows", "jobs") and record.status < 400:
            out.append(record)
    return out


async def test_two_operators_one_acts_and_the_standby_takes_over_after_a_kill(
    operator_process: ProcessFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    for index, name in enumerate(WORKFLOWS):
        for stage in ("configure", "algorithm", "publish"):
            runtime.script(
                f"{name}-{stage}-job",
                Outcome(
                    duration=0.2 + 0.05 * (index % 7),
                    message=json.dumps(PUBLISH_RESULT) if stage == "publish" else None,
                ),
            )
    replicas = Replicas(operator_process, maxJobs="5", OPERATOR_BACKSTOP_SECONDS="5")
    urls, start = replicas.urls, replicas.start

    first = await start("a")
    await wait_readiness(urls["a"], 200)
    second = await start("b")
    await wait_readiness(urls["b"], 503)
    assert readiness(urls["a"]) == 200

    for name in WORKFLOWS:
        await cluster.create(make_workflow(name))

    async def four_ended() -> bool:
        return sum([is_terminal(await cluster.get("wf", name)) for name in WORKFLOWS]) >= 4

    deadline = time.monotonic() + 120
    while not await four_ended():
        assert time.monotonic() < deadline, f"fewer than 4 ended within 120 s:\n{first.log()[-3000:]}"
        await asyncio.sleep(0.02)
    ended = sum([is_terminal(await cluster.get("wf", name)) for name in WORKFLOWS])
    assert ended < len(WORKFLOWS), "every workflow ended before the kill: nothing left to take over"
    killed_at = time.monotonic()
    first.kill()
    cut_off = await deliveries_cut_off(cluster, receiver, WORKFLOWS)

    for name in WORKFLOWS:
        await wait_terminal(cluster, name, timeout=180, context=lambda: second.log()[-3000:])
    for name in WORKFLOWS:
        await receiver.wait("/stop", name, timeout=60)
        await wait_until_clean(cluster, name, timeout=60)
    await wait_readiness(urls["b"], 200, timeout=10)

    # Each write came from one of the two processes, told apart by their User-Agent.
    writes = acting_writes(cluster)
    by = {
        "a": [r for r in writes if "(operator-a)" in r.user_agent],
        "b": [r for r in writes if "(operator-b)" in r.user_agent],
    }
    strangers = [(r.method, r.path, r.user_agent) for r in writes if r not in by["a"] and r not in by["b"]]
    assert not strangers, f"writes from neither operator: {strangers[:5]}"
    assert by["a"], "the first operator (the leader) never wrote"
    # Exactly one acts at a time: the standby wrote nothing while the leader lived, and
    # nothing before the leader's last write was answered (requests the leader sent just
    # before the kill may be answered after it: the server is busy on this event loop).
    early = [(r.method, r.path) for r in by["b"] if r.time <= killed_at]
    assert not early, f"the standby wrote while the leader was alive: {early[:5]}"
    first_b, last_a = min(r.time for r in by["b"]), max(r.time for r in by["a"])
    assert last_a < first_b, f"both acted: the leader wrote {last_a - first_b:.2f} s after the standby began"
    takeover = first_b - killed_at
    assert takeover < TAKEOVER_LIMIT, f"the standby took {takeover:.1f} s to act after the kill"
    print(
        f"takeover: first write of the standby {takeover:.1f} s after the kill; the leader's last write "
        f"{last_a - killed_at:+.2f} s from the kill"
    )

    for name in WORKFLOWS:
        final = status(await cluster.get("wf", name))
        assert final.get("phase") == "Succeeded", (name, final)
    twice = {key: n for key, n in creation_counts(cluster).items() if n > 1}
    assert not twice, f"children created more than once: {twice}"
    assert_notified_once(receiver, WORKFLOWS, cut_off)


async def test_a_leader_cut_off_from_the_api_stops_before_the_standby_may_take_the_lease(
    cluster: EmbeddedCluster, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The deadline: a leader that cannot renew stops acting before another replica may acquire the Lease."""
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    events: dict[str, float] = {}
    clients: dict[str, Any] = {}

    def elector(who: str) -> LeaderElector:
        async def client() -> Any:  # called in the elector's own thread, on its own event loop
            clients[who] = await new_api_client(str(kubeconfig))
            return clients[who]

        return LeaderElector(
            client,
            cluster.namespace,
            who,
            on_acquired=lambda: events.setdefault(f"{who} acquired", time.monotonic()),
            on_lost=lambda: events.setdefault(f"{who} lost", time.monotonic()),
        )

    first = elector("a")
    second = elector("b")
    first.start()
    try:
        await wait_until(lambda: first.is_leader, timeout=30, what="a leading")
        second.start()
        await wait_until(lambda: "a acquired" in events and not second.is_leader, timeout=30, what="b standing by")
        clients["a"].configuration.host = "http://127.0.0.1:9"  # a's network fails: nothing listens there
        cut_at = time.monotonic()
        await wait_until(lambda: "b acquired" in events, timeout=30, what="b taking over")
        assert "a lost" in events, "the cut-off leader never stopped"
        assert events["a lost"] < events["b acquired"], events
        assert not first.is_leader and second.is_leader
        assert events["b acquired"] - cut_at < TAKEOVER_LIMIT, events
        lease = cluster.api.get(cluster.spec("leases"), cluster.namespace, LEASE_NAME)
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1, lease
    finally:
        await asyncio.to_thread(first.stop, False)
        await asyncio.to_thread(second.stop)
    lease = cluster.api.get(cluster.spec("leases"), cluster.namespace, LEASE_NAME)
    assert not lease["spec"].get("holderIdentity"), f"b did not release the Lease on stop: {lease}"
