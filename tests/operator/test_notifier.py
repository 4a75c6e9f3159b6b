"""The notifier on its own (issue 9, items 3 and 6; docs/contract.md §4).

A `Notifier` with a real Kubernetes client talks to the embedded cluster
and to a real HTTP receiver on 127.0.0.1; no kopf, no engine. Each test is
one rule of how a notification is sent and recorded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Receiver
from eth_account import Account
from eth_account.messages import encode_defunct
from helpers import TEST_ADDRESS, TEST_KEY, check_payload, make_workflow, signed_text, status, wait_until
from pydantic import SecretStr

from operator_engine import config as config_module
from operator_engine import notify
from operator_engine.devcluster import EmbeddedCluster
from operator_engine.kube import Kube, new_api_client
from operator_engine.model import parse_workflow
from operator_engine.notifier import WINDOW, Notifier

NotifierFactory = Callable[..., Awaitable[Notifier]]


@pytest.fixture
async def notifiers(
    cluster: EmbeddedCluster, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[NotifierFactory]:
    """``notifiers(deadline=...)``: a new Notifier (as a new operator process would make), closed at the end."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
    made: list[Notifier] = []

    async def make(deadline: float = 60.0, **env: str) -> Notifier:
        config = config_module.load(
            {
                "OPERATOR_NAMESPACE": cluster.namespace,
                "OPERATOR_PRIVATE_KEY": TEST_KEY,
                "NOTIFY_START_URL": receiver.start_url,
                "NOTIFY_STOP_URL": receiver.stop_url,
                **env,
            }
        )
        notifier = Notifier(config, Kube(await new_api_client(), attempts=2, base_delay=0.01, max_delay=0.05), deadline)
        made.append(notifier)
        return notifier

    yield make
    if receiver.hold is not None:
        receiver.hold.set()
    for notifier in made:
        await notifier.close()
        await notifier.kube.aclose()


async def started(cluster: EmbeddedCluster, name: str) -> dict[str, Any]:
    """A Workflow in the cluster, admitted (dateStarted set), as the engine would hand it over."""
    await cluster.create(make_workflow(name))
    cluster.api.update(
        cluster.spec("wf"),
        cluster.namespace,
        name,
        lambda old: {**old, "status": {"phase": "Running", "statusCode": 10, "dateStarted": "2026-11-29T00:00:00Z"}},
    )
    body = await cluster.get("wf", name)
    assert body is not None
    return body


def notified(body: dict[str, Any]) -> tuple[Any, Any]:
    """(status.notifications, status.notifying) of a Workflow."""
    st = status(body)
    return st.get("notifications") or {}, {k: v for k, v in (st.get("notifying") or {}).items() if v is not None}


# ---------------------------------------------------------------- the payload and the key


def test_the_key_is_the_workflows_uid_and_the_kind() -> None:
    assert notify.idempotency_key("6b1f6a3e-0d4c-4d53-9f1e-2f0e4c1b7a10", "start") == (
        "6b1f6a3e-0d4c-4d53-9f1e-2f0e4c1b7a10:start"
    )
    assert notify.idempotency_key("u", "start") != notify.idempotency_key("u", "stop")


def test_the_signature_covers_the_four_fields_as_before_and_not_the_key() -> None:
    workflow = parse_workflow({**make_workflow("wf-sign"), "metadata": {"name": "wf-sign", "namespace": "ns"}})
    body = notify.payload(workflow, SecretStr(TEST_KEY), "uid-1:start")
    assert body["idempotencyKey"] == "uid-1:start"
    text = signed_text(body)  # the text docs/contract.md §4 gives, from the four fields only
    assert text == notify.signed_text(workflow.secret, workflow.input_dids, workflow.job_id, workflow.algorithm_did)
    assert Account.recover_message(encode_defunct(text=text), signature=body["signature"]) == TEST_ADDRESS
    # Another key, the same signature: the key is outside the signed text.
    assert notify.payload(workflow, SecretStr(TEST_KEY), "uid-2:stop")["signature"] == body["signature"]
    assert notify.payload(workflow, None, "uid-1:start")["signature"] is None


# ---------------------------------------------------------------- one notification


async def test_a_notification_is_posted_once_with_its_key_in_header_and_body_and_its_result_recorded(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-once")
    task = (await notifiers()).ensure(body, parse_workflow(body), "start")
    assert task is not None
    assert await task == "delivered"
    [post] = receiver.all()
    key = f"{body['metadata']['uid']}:start"
    assert post.path == "/start" and post.key == key and post.body["idempotencyKey"] == key, post
    check_payload(post.body, body)
    assert notified(await cluster.get("wf", "wf-once")) == ({"start": "delivered"}, {})


async def test_the_intent_is_recorded_just_before_the_post_and_the_result_just_after(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-order")
    since = len(cluster.request_log)
    assert await (await notifiers()).ensure(body, parse_workflow(body), "start") == "delivered"
    [post] = receiver.all()
    writes = [r for r in cluster.request_log[since:] if r.method == "PATCH"]
    assert [r.body["status"] for r in writes] == [
        {"notifying": {"start": post.key}},
        {"notifications": {"start": "delivered"}, "notifying": {"start": None}},
    ]
    intent, result = writes
    assert intent.time <= post.time <= result.time


async def test_every_attempt_of_one_notification_carries_the_same_key(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-retry")
    receiver.answers = [503, 500, 429]
    assert await (await notifiers()).ensure(body, parse_workflow(body), "start") == "delivered"
    posts = receiver.all()
    assert [p.status for p in posts] == [503, 500, 429, 200]
    assert {p.key for p in posts} == {f"{body['metadata']['uid']}:start"}
    assert notified(await cluster.get("wf", "wf-retry")) == ({"start": "delivered"}, {})


async def test_a_refusal_is_recorded_and_not_retried(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-refused")
    receiver.answers = [400]
    assert await (await notifiers()).ensure(body, parse_workflow(body), "start") == "refused: HTTP 400"
    assert len(receiver.all()) == 1
    assert notified(await cluster.get("wf", "wf-refused")) == ({"start": "refused: HTTP 400"}, {})


async def test_a_receiver_that_stays_down_is_given_up_after_the_deadline_and_that_is_recorded(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-down")
    receiver.fail_first = 10**9
    result = await (await notifiers(deadline=1.5)).ensure(body, parse_workflow(body), "start")
    assert result.startswith("gave up after ") and result.endswith("HTTP 503"), result
    assert len(receiver.all()) >= 2 and len({p.key for p in receiver.all()}) == 1
    assert notified(await cluster.get("wf", "wf-down")) == ({"start": result}, {})


async def test_a_recorded_notification_is_not_sent_again(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-recorded")
    notifier = await notifiers()
    assert await notifier.ensure(body, parse_workflow(body), "start") == "delivered"
    fresh = await cluster.get("wf", "wf-recorded")
    assert fresh is not None
    assert notifier.ensure(fresh, parse_workflow(fresh), "start") is None
    assert (await notifiers()).ensure(fresh, parse_workflow(fresh), "start") is None  # nor by a later process
    assert len(receiver.all()) == 1


async def test_a_body_read_before_the_record_does_not_send_it_again(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    """A reconcile may hold a Workflow read before a delivery was recorded; the intent patch reads it anew."""
    stale = await started(cluster, "wf-stale")
    notifier = await notifiers()
    assert await notifier.ensure(stale, parse_workflow(stale), "start") == "delivered"
    again = notifier.ensure(stale, parse_workflow(stale), "start")
    assert again is not None
    assert await again == "delivered"
    assert len(receiver.all()) == 1
    assert notified(await cluster.get("wf", "wf-stale")) == ({"start": "delivered"}, {})


async def test_a_delivery_cut_off_before_its_record_is_sent_again_with_the_same_key(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    """The crash window: the receiver has the POST, the process ends before the record. Its successor resends."""
    body = await started(cluster, "wf-cut")
    receiver.hold = threading.Event()
    first = await notifiers()
    first.ensure(body, parse_workflow(body), "start")
    await wait_until(lambda: receiver.all(), timeout=30, what="the first POST")
    await first.close()  # the process ends with the POST answered to nobody
    receiver.hold.set()
    receiver.hold = None
    cut = await cluster.get("wf", "wf-cut")
    assert cut is not None
    key = f"{body['metadata']['uid']}:start"
    assert notified(cut) == ({}, {"start": key}), "the intent is recorded, the result is not"

    second = await notifiers()  # a new process, no memory: only the status
    assert await second.ensure(cut, parse_workflow(cut), "start") == "delivered"
    posts = receiver.all()
    assert len(posts) == 2 and {p.key for p in posts} == {key} and {p.body["idempotencyKey"] for p in posts} == {key}
    assert notified(await cluster.get("wf", "wf-cut")) == ({"start": "delivered"}, {})


async def test_a_result_the_api_server_does_not_take_at_once_is_recorded_once_it_does(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-record-retry")
    receiver.hold = threading.Event()
    task = (await notifiers()).ensure(body, parse_workflow(body), "start")
    assert task is not None
    await wait_until(lambda: receiver.all(), timeout=30, what="the POST")
    cluster.faults.inject(rate=1.0, statuses=(503,), methods=("PATCH",), path_contains="/workflows/wf-record-retry")
    receiver.hold.set()
    await wait_until(lambda: cluster.faults.injected >= 3, timeout=30, what="three refused records")
    assert not task.done()
    cluster.faults.clear()
    assert await task == "delivered"
    assert len(receiver.all()) == 1
    assert notified(await cluster.get("wf", "wf-record-retry")) == ({"start": "delivered"}, {})


async def test_a_workflow_that_is_gone_is_not_notified(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-gone")
    cluster.api.delete(cluster.spec("wf"), cluster.namespace, "wf-gone")
    assert await (await notifiers()).ensure(body, parse_workflow(body), "start") == "gone"
    assert receiver.all() == []


async def test_one_notification_at_a_time_is_between_its_post_and_its_record(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    """What a crash can cut off: at most one record (notifier.WINDOW), however many notifications go out."""
    assert WINDOW == 1
    bodies = [await started(cluster, f"wf-window-{i}") for i in range(4)]
    receiver.hold = threading.Event()
    notifier = await notifiers()
    tasks = [notifier.ensure(b, parse_workflow(b), "start") for b in bodies]
    await wait_until(lambda: receiver.all(), timeout=30, what="the first POST")
    with pytest.raises(TimeoutError):  # the others wait while the first is unanswered
        await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), 0.5)
    assert len(receiver.all()) == 1
    receiver.hold.set()
    assert set(await asyncio.gather(*tasks)) == {"delivered"}
    records = {
        r.path.split("/")[-2]: r.time
        for r in cluster.request_log
        if r.method == "PATCH" and "notifications" in (r.body or {}).get("status", {})
    }
    posts = sorted(receiver.all(), key=lambda p: p.time)
    for earlier, later in zip(posts, posts[1:], strict=False):
        assert records[earlier.body["jobId"]] <= later.time, "a POST went out before the previous result was recorded"


# ---------------------------------------------------------------- start and stop


async def test_the_stop_notification_waits_for_the_start_one(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    body = await started(cluster, "wf-order-kinds")
    receiver.hold = threading.Event()
    notifier = await notifiers()
    start = notifier.ensure(body, parse_workflow(body), "start")
    stop = notifier.ensure(body, parse_workflow(body), "stop")
    assert start is not None and stop is not None
    await wait_until(lambda: receiver.all(), timeout=30, what="the start POST")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stop), 0.5)
    assert [p.path for p in receiver.all()] == ["/start"]
    receiver.hold.set()
    assert await stop == "delivered" and await start == "delivered"
    assert [p.path for p in receiver.all()] == ["/start", "/stop"]
    assert notified(await cluster.get("wf", "wf-order-kinds")) == ({"start": "delivered", "stop": "delivered"}, {})


async def test_on_deletion_the_stop_is_sent_only_if_the_start_was_delivered(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    delivered, refused = await started(cluster, "wf-del-a"), await started(cluster, "wf-del-b")
    notifier = await notifiers()
    assert await notifier.ensure(delivered, parse_workflow(delivered), "start") == "delivered"
    receiver.answers = [400]
    assert await notifier.ensure(refused, parse_workflow(refused), "start") == "refused: HTTP 400"
    # Bodies read before the records (a deletion event racing the delivery): the notifier reads them again.
    await notifier.before_delete(delivered, parse_workflow(delivered))
    await notifier.before_delete(refused, parse_workflow(refused))
    stops = receiver.all("/stop")
    assert [p.body["jobId"] for p in stops] == ["wf-del-a"], stops
    assert notified(await cluster.get("wf", "wf-del-a"))[0] == {"start": "delivered", "stop": "delivered"}


async def test_only_deliveries_on_their_way_are_remembered(
    notifiers: NotifierFactory, cluster: EmbeddedCluster, receiver: Receiver
) -> None:
    """Nothing grows with the number of workflows: the status is the memory of what was sent."""
    notifier = await notifiers()
    bodies = [await started(cluster, f"wf-mem-{i}") for i in range(5)]
    tasks = [notifier.ensure(b, parse_workflow(b), kind) for b in bodies for kind in ("start", "stop")]
    assert notifier.in_flight == 10
    assert set(await asyncio.gather(*tasks)) == {"delivered"}
    await wait_until(lambda: notifier.in_flight == 0, timeout=10, what="the deliveries to be forgotten")
    assert len(receiver.all()) == 10


def test_pending_counts_only_configured_unrecorded_notifications_of_a_started_workflow() -> None:
    config = config_module.load({"OPERATOR_NAMESPACE": "ns", "NOTIFY_START_URL": "http://127.0.0.1:9/start"})
    notifier = Notifier(config, kube=None, deadline=1.0)  # pending reads no cluster
    assert not notifier.pending({})  # never started: nothing to send
    assert notifier.pending({"dateStarted": "2026-11-29T00:00:00Z"})
    assert notifier.pending({"dateStarted": "2026-11-29T00:00:00Z", "notifying": {"start": "u:start"}})
    assert not notifier.pending({"dateStarted": "2026-11-29T00:00:00Z", "notifications": {"start": "delivered"}})
