"""The fault-injection seam: seeded errors before the store, never for the admin path."""

from __future__ import annotations

import aiohttp

from operator_engine.devcluster import EmbeddedCluster

CMS = "/api/v1/namespaces/ocean-compute/configmaps"


async def _post_many(http: aiohttp.ClientSession, count: int) -> list[int]:
    return [(await http.post(CMS, json={"metadata": {"name": f"cm{i}"}})).status for i in range(count)]


async def test_faults_hit_about_the_given_rate(cluster: EmbeddedCluster, http: aiohttp.ClientSession) -> None:
    cluster.faults.inject(rate=0.25, statuses=(500, 429), methods={"POST"}, seed=1)
    statuses = await _post_many(http, 200)
    faulted = [s for s in statuses if s != 201]
    assert 30 <= len(faulted) <= 70
    assert set(faulted) == {500, 429}
    assert cluster.faults.injected == len(faulted)
    assert len(await cluster.list("configmap")) == 200 - len(faulted)  # faulted writes never reached the store


async def test_faults_are_deterministic_given_the_seed() -> None:
    runs = []
    for _ in range(2):
        async with EmbeddedCluster() as cluster, aiohttp.ClientSession(base_url=cluster.url) as http:
            cluster.faults.inject(rate=0.5, seed=7)
            runs.append(await _post_many(http, 20))
    assert runs[0] == runs[1]


async def test_429_carries_retry_after_and_a_status_body(cluster: EmbeddedCluster, http: aiohttp.ClientSession) -> None:
    cluster.faults.inject(rate=1.0, statuses=(429,))
    response = await http.post(CMS, json={"metadata": {"name": "a"}})
    body = await response.json()
    assert response.status == 429 and response.headers["Retry-After"] == "1"
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "TooManyRequests", 429)
    assert cluster.request_log[-1].faulted


async def test_faults_spare_unlisted_methods_and_the_admin_client(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession, admin_http: aiohttp.ClientSession
) -> None:
    cluster.faults.inject(rate=1.0, methods={"POST"})
    assert (await http.get(CMS)).status == 200
    assert (await admin_http.post(CMS, json={"metadata": {"name": "a"}})).status == 201
    assert await cluster.create({"kind": "ConfigMap", "metadata": {"name": "b"}})


async def test_clear_stops_faults(cluster: EmbeddedCluster, http: aiohttp.ClientSession) -> None:
    cluster.faults.inject(rate=1.0)
    cluster.faults.clear()
    assert await _post_many(http, 5) == [201] * 5
