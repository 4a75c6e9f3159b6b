"""The operator's Kubernetes client (operator_engine/kube.py) on kubernetes_asyncio, against a real HTTP server.

What the engine relies on: "already exists" and "not found" are answers, not
errors (False), a refusal is a PermanentError with the API server's message,
transient answers are retried and counted in `operator_engine_api_errors_total`,
and hundreds of requests can be in flight at once on one client, which
closes its connections when asked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.web
import pytest
import yaml
from helpers import NS, make_workflow

from operator_engine import metrics
from operator_engine.devcluster import EmbeddedCluster
from operator_engine.kube import POOL_SIZE, Kube, PermanentError, TransientError, environment_proxy, new_api_client


@pytest.fixture
async def kube(cluster: EmbeddedCluster, tmp_path: Path) -> AsyncIterator[Kube]:
    client = Kube(await new_api_client(str(cluster.write_kubeconfig(tmp_path / "kubeconfig"))), base_delay=0.01)
    yield client
    await client.close()


ENVIRONMENT_CONFIG_MAP = "operator-engine-environment"  # the one ConfigMap the Role lets the operator patch (README)


def api_errors(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("operator_engine_api_errors_total", {"reason": reason}) or 0.0


def config_map(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}, "data": {"a": "1"}}


async def test_create_twice_is_true_then_false_and_deleting_what_is_gone_is_false(kube: Kube) -> None:
    assert await kube.create(config_map("cm-once")) is True
    assert await kube.create(config_map("cm-once")) is False  # 409: a re-run after a crash
    assert await kube.delete("ConfigMap", NS, "cm-once") is True
    assert await kube.delete("ConfigMap", NS, "cm-once") is False  # 404


async def test_status_patches_merge_and_a_missing_workflow_is_false(kube: Kube, cluster: EmbeddedCluster) -> None:
    await cluster.create(make_workflow("wf-client"))
    assert await kube.patch_workflow_status(NS, "wf-client", {"statusCode": 1, "phase": "Queued"})
    assert await kube.patch_workflow_status(NS, "wf-client", {"statusCode": 10})
    body = await kube.get_workflow(NS, "wf-client")
    assert body is not None and body["status"]["statusCode"] == 10 and body["status"]["phase"] == "Queued"
    assert [w["metadata"]["name"] for w in await kube.list_workflows(NS)] == ["wf-client"]
    assert await kube.get_workflow(NS, "wf-gone") is None
    assert await kube.patch_workflow_status(NS, "wf-gone", {"statusCode": 1}) is None


async def test_the_environment_config_map_is_created_then_merged(kube: Kube, cluster: EmbeddedCluster) -> None:
    await kube.apply_config_map(NS, ENVIRONMENT_CONFIG_MAP, {"environment.json": "{}"})
    await kube.apply_config_map(NS, ENVIRONMENT_CONFIG_MAP, {"environment.json": '{"currentJobs": 1}'})
    stored = await cluster.get("configmaps", ENVIRONMENT_CONFIG_MAP)
    assert stored["data"] == {"environment.json": '{"currentJobs": 1}'}


async def test_a_refusal_is_permanent_and_names_the_reason(kube: Kube, cluster: EmbeddedCluster) -> None:
    before = api_errors("Forbidden")
    cluster.faults.inject(rate=1.0, statuses=(403,), methods=("POST",), path_contains="/configmaps")
    with pytest.raises(PermanentError, match=r"^403 "):
        await kube.create(config_map("cm-refused"))
    assert api_errors("Forbidden") == before + 1  # not retried


async def test_transient_answers_are_retried_and_each_is_counted(kube: Kube, cluster: EmbeddedCluster) -> None:
    before = api_errors("ServiceUnavailable")
    cluster.faults.inject(rate=1.0, statuses=(503,), methods=("GET",), path_contains="/workflows")
    with pytest.raises(TransientError, match="503"):
        await kube.list_workflows(NS)
    cluster.faults.clear()
    assert api_errors("ServiceUnavailable") == before + kube.attempts
    assert await kube.list_workflows(NS) == []


async def test_no_answer_is_counted_as_no_response(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_for(f"http://127.0.0.1:{port}"))
    kube = Kube(await new_api_client(str(path)), attempts=2, base_delay=0.01)
    before = api_errors("NoResponse")
    try:
        with pytest.raises(TransientError):
            await kube.list_workflows(NS)
    finally:
        await kube.close()
    assert api_errors("NoResponse") == before + 2


def kubeconfig_for(server: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )


async def test_hundreds_of_requests_are_in_flight_at_once_and_close_ends_the_connections(tmp_path: Path) -> None:
    """A server that answers nothing until 300 requests wait at once: a pool of a few threads never gets there."""
    wanted = 300
    assert wanted <= POOL_SIZE
    waiting = 0
    all_in = asyncio.Event()
    peers: set[tuple[str, int]] = set()

    async def workflows(request: aiohttp.web.Request) -> aiohttp.web.Response:
        nonlocal waiting
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        waiting += 1
        if waiting >= wanted:
            all_in.set()
        await all_in.wait()
        return aiohttp.web.json_response(
            {"apiVersion": "oceanprotocol.com/v1alpha", "kind": "WorkFlowList", "items": []}
        )

    app = aiohttp.web.Application()
    app.router.add_get("/apis/oceanprotocol.com/v1alpha/namespaces/{ns}/workflows", workflows)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_for(f"http://127.0.0.1:{port}"))
    kube = Kube(await new_api_client(str(path)), attempts=1, request_timeout=60)
    try:
        results = await asyncio.wait_for(asyncio.gather(*(kube.list_workflows(NS) for _ in range(wanted))), 60)
        assert results == [[]] * wanted
        assert len(peers) >= wanted  # one connection each: they were all open at once
        session = kube.client.rest_client.pool_manager
        await kube.close()
        assert session.closed
    finally:
        await kube.close()
        await runner.cleanup()


def test_the_proxy_comes_from_the_environment_once_and_no_proxy_exempts_a_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    assert environment_proxy("https://10.0.0.1:6443") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "kubernetes.default.svc,127.0.0.1")
    assert environment_proxy("https://10.0.0.1:6443") == "http://proxy.example:3128"
    assert environment_proxy("https://kubernetes.default.svc:443") is None
    assert environment_proxy("https://127.0.0.1:6443") is None
    assert environment_proxy("http://10.0.0.1:8080") is None  # HTTP_PROXY is not set


async def test_the_client_session_does_not_look_up_proxies_or_netrc_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trust_env would run a proxy and ~/.netrc lookup in a thread for every request; the proxy is resolved once."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_for("https://127.0.0.2:6443"))
    client = await new_api_client(str(path))
    try:
        assert client.rest_client.pool_manager.trust_env is False
        assert client.rest_client.proxy == "http://127.0.0.1:9"
        assert client.rest_client.pool_manager.connector is not None
        assert client.rest_client.pool_manager.connector.limit == POOL_SIZE
    finally:
        await client.close()


async def test_a_refusal_read_as_json_names_the_api_servers_message(kube: Kube) -> None:
    """Creates, deletes and lists read the answer themselves (no model objects): a refusal still says why."""
    manifest = config_map("unnamed")
    del manifest["metadata"]["name"]  # type: ignore[attr-defined]
    with pytest.raises(PermanentError, match=r"^422 metadata.name: Required value"):
        await kube.create(manifest)
    assert await kube.list_children("Job", NS, "wf-none") == []
