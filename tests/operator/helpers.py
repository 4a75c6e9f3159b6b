"""
Shared tools of the operator's acceptance tests: sample Workflows, status and
request-history readers, notification checks and waits with a useful failure.

Everything here asserts on what the embedded cluster saw (its objects, its
request log, its change stream), never on the operator's internals.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from eth_account import Account
from eth_account.messages import encode_defunct

from operator_engine.devcluster import EmbeddedCluster, RequestRecord
from operator_engine.devcluster.patches import merge_patch

NS = "ocean-compute"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "k8s_install" / "workflow-1.yaml"

# A well-known test key (web3.py's documentation) and its address.
TEST_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
TEST_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Stopped", "TimedOut"})
CHILD_PLURALS = ("configmaps", "persistentvolumeclaims", "secrets", "jobs")
MANAGED_BY = "operator-engine"

# What the publish pod reports on success (docs/contract.md §2.3), copied into the status.
PUBLISH_RESULT = {
    "algologUrl": "https://results.example/algorithm.log",
    "configlogUrl": "https://results.example/configure.log",
    "publishlogUrl": "https://results.example/publish.log",
    "outputsUrl": ["https://results.example/outputs/result.csv"],
}


# ---------------------------------------------------------------- workflows


def load_sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE.read_text())


def stage_of(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["metadata"]["stages"][0]


def make_workflow(
    name: str,
    *,
    maxtime: int | None = None,
    secret: str | None | bool = True,
    mutate: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """
    The sample Workflow renamed to ``name`` (labels.workflow too).

    ``maxtime`` sets the stage's compute.maxtime; ``secret=None`` removes
    spec.secret, a string replaces it; ``mutate(body)`` changes anything else.
    """
    body = load_sample()
    body["metadata"]["name"] = name
    body["metadata"]["labels"] = {"workflow": name}
    body["metadata"].pop("namespace", None)
    if maxtime is not None:
        stage_of(body)["compute"]["maxtime"] = maxtime
    if secret is None:
        body["spec"].pop("secret", None)
    elif isinstance(secret, str):
        body["spec"]["secret"] = secret
    if mutate is not None:
        mutate(body)
    return body


def input_dids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in stage_of(body)["input"]]


def algorithm_did(body: dict[str, Any]) -> str:
    return stage_of(body)["algorithm"]["id"]


def child_names(name: str) -> dict[str, str]:
    return {
        "configmap": name,
        "data": f"{name}-data",
        "adminlogs": f"{name}-adminlogs",
        "algorithm-secret": f"{name}-algorithm-secret",
        "publish-credentials": f"{name}-publish-credentials",
        "configure": f"{name}-configure-job",
        "algorithm": f"{name}-algorithm-job",
        "filter": f"{name}-filter-job",
        "publish": f"{name}-publish-job",
    }


# ---------------------------------------------------------------- status


def status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def is_terminal(obj: dict[str, Any] | None) -> bool:
    st = status(obj)
    return bool(st.get("dateFinished")) and st.get("phase") in TERMINAL_PHASES


def describe(obj: dict[str, Any] | None) -> str:
    """A short text of a Workflow's status, for failure messages."""
    if obj is None:
        return "<absent>"
    st = {k: v for k, v in status(obj).items() if k != "kopf"}
    return json.dumps(st, default=str, sort_keys=True)[:2000]


async def wait_workflow(
    cluster: EmbeddedCluster,
    name: str,
    predicate: Callable[[dict[str, Any]], Any],
    timeout: float = 60.0,
    what: str = "the condition",
    context: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Wait until the Workflow exists and ``predicate(workflow)``; fail with its status if it does not."""
    try:
        obj = await cluster.wait_for("wf", name, lambda o: o is not None and predicate(o), timeout=timeout)
    except TimeoutError:
        obj = await cluster.get("wf", name)
        extra = f"\n{context()}" if context is not None else ""
        raise AssertionError(
            f"workflow {name} did not reach {what} within {timeout:.0f} s; status: {describe(obj)}{extra}"
        ) from None
    assert obj is not None
    return obj


async def wait_terminal(
    cluster: EmbeddedCluster, name: str, timeout: float = 60.0, context: Callable[[], str] | None = None
) -> dict[str, Any]:
    return await wait_workflow(cluster, name, is_terminal, timeout, "a terminal status", context)


async def wait_code(
    cluster: EmbeddedCluster, name: str, code: int, timeout: float = 60.0, context: Callable[[], str] | None = None
) -> dict[str, Any]:
    """Wait until statusCode >= code (codes only grow along the pipeline) or the workflow is terminal."""
    return await wait_workflow(
        cluster,
        name,
        lambda o: (status(o).get("statusCode") or 0) >= code or is_terminal(o),
        timeout,
        f"status code {code}",
        context,
    )


async def wait_gone(cluster: EmbeddedCluster, kind: str, name: str, timeout: float = 60.0) -> None:
    try:
        await cluster.wait_for(kind, name, lambda o: o is None, timeout=timeout)
    except TimeoutError:
        obj = await cluster.get(kind, name)
        raise AssertionError(
            f"{kind} {name} still exists after {timeout:.0f} s: {json.dumps(obj, default=str)[:1500]}"
        ) from None


async def patch_spec(cluster: EmbeddedCluster, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch the Workflow's spec as operator-service (or kubectl) would."""
    return cluster.api.update(
        cluster.spec("wf"), cluster.namespace, name, lambda old: merge_patch(old, {"spec": spec_patch})
    )


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "the condition", interval: float = 0.05
) -> Any:
    """Poll a cheap test-side predicate (the receiver, the request log) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------- request log


def _path_parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def resource_of(record: RequestRecord) -> tuple[str | None, str | None, str | None]:
    """(plural, name, subresource) of a namespaced request path."""
    parts = _path_parts(record.path)
    if "namespaces" not in parts:
        return None, None, None
    i = parts.index("namespaces")
    rest = parts[i + 2 :]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return plural, name, sub


def creation_posts(cluster: EmbeddedCluster, plural: str | None = None, *, ok_only: bool = True) -> list[RequestRecord]:
    """POSTs creating objects (of ``plural``), in order; only those answered 201 unless ``ok_only=False``."""
    result = []
    for record in list(cluster.request_log):
        if record.method != "POST" or record.faulted:
            continue
        rplural, rname, _ = resource_of(record)
        if rplural is None or rname is not None:
            continue
        if plural is not None and rplural != plural:
            continue
        if ok_only and record.status != 201:
            continue
        result.append(record)
    return result


def posted_name(record: RequestRecord) -> str | None:
    body = record.body if isinstance(record.body, dict) else {}
    return (body.get("metadata") or {}).get("name")


def created(cluster: EmbeddedCluster, plural: str, prefix: str | None = None) -> list[str]:
    """Names of objects of ``plural`` successfully created over HTTP, in creation order."""
    names = [posted_name(r) for r in creation_posts(cluster, plural)]
    return [n for n in names if n is not None and (prefix is None or n == prefix or n.startswith(prefix + "-"))]


def creation_counts(
    cluster: EmbeddedCluster, plurals: Iterable[str] = CHILD_PLURALS
) -> collections.Counter[tuple[str, str]]:
    """How many times each (plural, name) was successfully created (201) over HTTP."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for plural in plurals:
        for record in creation_posts(cluster, plural):
            name = posted_name(record)
            if name is not None:
                counts[(plural, name)] += 1
    return counts


def creation_time(cluster: EmbeddedCluster, plural: str, name: str) -> float | None:
    for record in creation_posts(cluster, plural):
        if posted_name(record) == name:
            return record.time
    return None


def creation_index(cluster: EmbeddedCluster, plural: str, name: str) -> int | None:
    """Position in the request log of the first successful POST of that object."""
    for index, record in enumerate(list(cluster.request_log)):
        if record.method == "POST" and record.status == 201 and not record.faulted:
            rplural, rname, _ = resource_of(record)
            if rplural == plural and rname is None and posted_name(record) == name:
                return index
    return None


def _status_code_in(body: Any) -> int | None:
    if isinstance(body, dict):
        code = (body.get("status") or {}).get("statusCode") if isinstance(body.get("status"), dict) else None
        return code if isinstance(code, int) else None
    if isinstance(body, list):  # a JSON patch
        code = None
        for op in body:
            if not isinstance(op, dict):
                continue
            if op.get("path") == "/status/statusCode" and isinstance(op.get("value"), int):
                code = op["value"]
            elif op.get("path") == "/status" and isinstance(op.get("value"), dict):
                code = op["value"].get("statusCode", code)
        return code
    return None


def status_codes(cluster: EmbeddedCluster, name: str) -> list[int]:
    """The statusCode values written to the Workflow over HTTP (successful PATCH/PUT), in order."""
    codes = []
    for record in list(cluster.request_log):
        if record.method not in ("PATCH", "PUT") or record.status >= 300 or record.faulted:
            continue
        plural, rname, _ = resource_of(record)
        if plural != "workflows" or rname != name:
            continue
        code = _status_code_in(record.body)
        if code is not None:
            codes.append(code)
    return codes


def dedup(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def is_subsequence(needle: list[Any], haystack: list[Any]) -> bool:
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)


def watch_started_since(cluster: EmbeddedCluster, index: int, plural: str = "workflows") -> bool:
    """Whether a watch on ``plural`` was opened at or after request-log position ``index``."""
    for record in cluster.request_log[index:]:
        if record.method == "GET" and record.query.get("watch") in ("true", "1") and resource_of(record)[0] == plural:
            return True
        if (
            record.method == "GET"
            and record.query.get("watch") in ("true", "1")
            and _path_parts(record.path)[-1:] == [plural]
        ):
            return True
    return False


# ---------------------------------------------------------------- children


async def children_of(cluster: EmbeddedCluster, name: str) -> dict[str, list[str]]:
    """Names of the Workflow's children that still exist, per plural (label app=W)."""
    found: dict[str, list[str]] = {}
    for plural in CHILD_PLURALS:
        items = await cluster.list(plural, {"app": name})
        if items:
            found[plural] = [i["metadata"]["name"] for i in items]
    return found


async def running_pods_of(cluster: EmbeddedCluster, name: str) -> list[str]:
    """Pods of the Workflow's Jobs (job-name W-...) that have not ended."""
    pods = await cluster.list("pods")
    return [
        p["metadata"]["name"]
        for p in pods
        if (p["metadata"].get("labels") or {}).get("job-name", "").startswith(name + "-")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


async def wait_until_clean(cluster: EmbeddedCluster, name: str, timeout: float = 30.0) -> None:
    """Wait until no child (label app=W) and no running pod of the Workflow remains."""
    deadline = time.monotonic() + timeout
    while (left := await children_of(cluster, name)) or await running_pods_of(cluster, name):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"children of {name} still exist {timeout:.0f} s after the end: {left}; "
                f"running pods: {await running_pods_of(cluster, name)}"
            )
        await asyncio.sleep(0.1)


async def jobs_of(cluster: EmbeddedCluster, name: str) -> list[str]:
    return [j["metadata"]["name"] for j in await cluster.list("jobs", {"app": name})]


# ---------------------------------------------------------------- notifications


def signed_text(payload: dict[str, Any]) -> str:
    return (
        json.dumps(payload["secret"])
        + json.dumps(payload["DID"])
        + json.dumps(payload["jobId"])
        + json.dumps(payload["algoDID"])
    )


def signer_of(payload: dict[str, Any]) -> str:
    return str(Account.recover_message(encode_defunct(text=signed_text(payload)), signature=payload["signature"]))


def check_payload(payload: dict[str, Any], body: dict[str, Any]) -> None:
    """The notification payload of docs/contract.md §4 for Workflow ``body``, signed by the test key."""
    name = body["metadata"]["name"]
    assert set(payload) >= {"algoDID", "jobId", "secret", "DID", "signature"}, payload
    assert payload["jobId"] == body["metadata"].get("labels", {}).get("workflow", name)
    assert payload["DID"] == input_dids(body)
    assert payload["algoDID"] == algorithm_did(body)
    assert payload["secret"] == body["spec"].get("secret")
    assert isinstance(payload["signature"], str) and payload["signature"].startswith("0x"), payload["signature"]
    assert signer_of(payload) == TEST_ADDRESS


def copy_body(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(body)


async def deliveries_cut_off(cluster: EmbeddedCluster, receiver: Any, names: Iterable[str]) -> set[tuple[str, str]]:
    """After a hard kill: the (workflow, kind) notifications a receiver accepted whose record the kill cut off.

    A process killed between a receiver's 200 and the status patch that records
    it leaves only the intent (`status.notifying`), so the next process sends it
    again, with the same idempotency key: at least once there, exactly once
    everywhere else (docs/contract.md §4). Read with the killed process gone,
    the status is what the next one will see.
    """
    await receiver.idle()  # a POST the killed process had sent is recorded first
    cut: set[tuple[str, str]] = set()
    for name in names:
        recorded = status(await cluster.get("wf", name)).get("notifications") or {}
        for kind in ("start", "stop"):
            if receiver.accepted(f"/{kind}", name) and kind not in recorded:
                cut.add((name, kind))
    return cut


def assert_notified_once(receiver: Any, names: Iterable[str], cut_off: set[tuple[str, str]] = frozenset()) -> None:
    """Each workflow got one start and one stop notification; two only where a kill cut off the record of the first.

    Every copy of one notification carries the same idempotency key (docs/contract.md §4).
    """
    for name in names:
        for kind in ("start", "stop"):
            bodies = receiver.accepted(f"/{kind}", name)
            allowed = {1, 2} if (name, kind) in cut_off else {1}
            assert len(bodies) in allowed, (name, kind, len(bodies), sorted(cut_off), receiver.all())
            keys = {body.get("idempotencyKey") for body in bodies}
            assert len(keys) == 1 and str(keys.pop()).endswith(f":{kind}"), (name, kind, bodies)


# ---------------------------------------------------------------- replicas


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replicas:
    """Two operator processes, "a" and "b", with leader election, each with a readiness endpoint of its own.

    `start(who)` starts one with `env` added. METRICS_PORT=0: two processes on
    one machine must not both listen on the metrics port.
    """

    def __init__(self, operator_process: Callable[..., Any], **env: str) -> None:
        self.urls = {who: f"http://127.0.0.1:{free_port()}/readyz" for who in ("a", "b")}
        self._operator_process = operator_process
        self._env = env

    def start(self, who: str) -> Any:
        return self._operator_process(
            LEADER_ELECTION="true",
            POD_NAME=f"operator-{who}",
            READINESS_ENDPOINT=self.urls[who],
            METRICS_PORT="0",
            **self._env,
        )


def readiness(url: str) -> int | None:
    """The HTTP status of an operator's readiness endpoint, None while it does not answer."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    try:
        with direct.open(url, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


async def wait_readiness(url: str, code: int, timeout: float = 60.0) -> None:
    """Wait until the readiness endpoint answers `code`: 200 on the replica that acts, 503 on a standby."""
    await wait_until(lambda: readiness(url) == code, timeout=timeout, what=f"{url} answering {code}")
