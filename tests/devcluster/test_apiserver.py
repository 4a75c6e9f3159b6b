"""The API-server rules the embedded cluster adds on top of KMock."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from typing import Any

import aiohttp

from operator_engine.devcluster import EmbeddedCluster

from .helpers import job_manifest, workflow_manifest

JOBS = "/apis/batch/v1/namespaces/ocean-compute/jobs"
WFS = "/apis/oceanprotocol.com/v1alpha/namespaces/ocean-compute/workflows"
CMS = "/api/v1/namespaces/ocean-compute/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def _json(response: aiohttp.ClientResponse) -> Any:
    return await response.json(content_type=None)


async def test_create_assigns_uid_timestamp_resource_version_generation(http: aiohttp.ClientSession) -> None:
    created = await _json(await http.post(JOBS, json=job_manifest("j1")))
    meta = created["metadata"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", meta["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["generation"] == 1
    assert meta["namespace"] == "ocean-compute"
    assert int(meta["resourceVersion"]) > 0
    assert created["kind"] == "Job" and created["apiVersion"] == "batch/v1"


async def test_resource_version_increases_on_every_write(http: aiohttp.ClientSession) -> None:
    first = await _json(await http.post(CMS, json={"metadata": {"name": "a"}, "data": {"k": "1"}}))
    second = await _json(await http.post(CMS, json={"metadata": {"name": "b"}}))
    patched = await _json(await http.patch(f"{CMS}/a", json={"data": {"k": "2"}}, headers=MERGE))
    versions = [int(o["metadata"]["resourceVersion"]) for o in (first, second, patched)]
    assert versions == sorted(versions) and len(set(versions)) == 3


async def test_noop_patch_keeps_resource_version(http: aiohttp.ClientSession) -> None:
    first = await _json(await http.post(CMS, json={"metadata": {"name": "a"}, "data": {"k": "1"}}))
    again = await _json(await http.patch(f"{CMS}/a", json={"data": {"k": "1"}}, headers=MERGE))
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


async def test_generation_bumps_on_spec_change_only(http: aiohttp.ClientSession) -> None:
    await http.post(WFS, json=workflow_manifest("wf1"))
    labelled = await _json(await http.patch(f"{WFS}/wf1", json={"metadata": {"labels": {"x": "y"}}}, headers=MERGE))
    assert labelled["metadata"]["generation"] == 1
    changed = await _json(await http.patch(f"{WFS}/wf1", json={"spec": {"stopRequested": True}}, headers=MERGE))
    assert changed["metadata"]["generation"] == 2


async def test_clients_cannot_change_uid_or_creation_timestamp(http: aiohttp.ClientSession) -> None:
    created = await _json(await http.post(CMS, json={"metadata": {"name": "a"}}))
    patched = await _json(
        await http.patch(f"{CMS}/a", json={"metadata": {"uid": "x", "creationTimestamp": None}}, headers=MERGE)
    )
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert patched["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]


async def test_creation_index_orders_objects_created_in_the_same_second() -> None:
    frozen = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    async with EmbeddedCluster(clock=lambda: frozen) as cluster:
        created = [await cluster.create(workflow_manifest(name)) for name in ("wf-c", "wf-a", "wf-b")]
        assert {o["metadata"]["creationTimestamp"] for o in created} == {"2026-01-02T03:04:05Z"}
        indexes = [cluster.api.creation_index(o["metadata"]["uid"]) for o in created]
        assert indexes == sorted(indexes)


async def test_duplicate_create_is_409_already_exists(http: aiohttp.ClientSession) -> None:
    await http.post(JOBS, json=job_manifest("j1"))
    response = await http.post(JOBS, json=job_manifest("j1"))
    body = await _json(response)
    assert response.status == 409
    assert body | {"message": ..., "details": ...} == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "reason": "AlreadyExists",
        "code": 409,
        "message": ...,
        "details": ...,
    }
    assert body["details"]["name"] == "j1"


async def test_missing_object_is_404_not_found(http: aiohttp.ClientSession) -> None:
    response = await http.get(f"{JOBS}/nope")
    body = await _json(response)
    assert response.status == 404
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "NotFound", 404)


async def test_create_in_missing_namespace_is_404(http: aiohttp.ClientSession) -> None:
    response = await http.post("/api/v1/namespaces/elsewhere/configmaps", json={"metadata": {"name": "a"}})
    assert response.status == 404


async def test_generate_name_appends_five_characters(http: aiohttp.ClientSession) -> None:
    created = await _json(
        await http.post("/api/v1/namespaces/ocean-compute/events", json={"metadata": {"generateName": "kopf-event-"}})
    )
    assert re.fullmatch(r"kopf-event-[a-z0-9]{5}", created["metadata"]["name"])


async def test_stale_resource_version_is_409_conflict(http: aiohttp.ClientSession) -> None:
    created = await _json(await http.post(CMS, json={"metadata": {"name": "a"}}))
    await http.patch(f"{CMS}/a", json={"data": {"k": "v"}}, headers=MERGE)
    stale = dict(created, data={"k": "other"})
    assert (await http.put(f"{CMS}/a", json=stale)).status == 409


async def test_list_has_kind_api_version_and_resource_version(http: aiohttp.ClientSession) -> None:
    await http.post(JOBS, json=job_manifest("j1"))
    listing = await _json(await http.get(JOBS))
    assert listing["kind"] == "JobList" and listing["apiVersion"] == "batch/v1"
    assert int(listing["metadata"]["resourceVersion"]) >= int(listing["items"][0]["metadata"]["resourceVersion"])


async def test_listing_namespaces_works(http: aiohttp.ClientSession) -> None:
    listing = await _json(await http.get("/api/v1/namespaces"))
    assert listing["kind"] == "NamespaceList"
    assert {ns["metadata"]["name"] for ns in listing["items"]} == {"default", "ocean-compute"}
    single = await _json(await http.get("/api/v1/namespaces/ocean-compute"))
    assert single["kind"] == "Namespace" and single["status"] == {"phase": "Active"}


async def test_status_patch_changes_only_status(http: aiohttp.ClientSession) -> None:
    await http.post(WFS, json=workflow_manifest("wf1"))
    patched = await _json(
        await http.patch(
            f"{WFS}/wf1/status",
            headers=MERGE,
            json={"status": {"phase": "Running"}, "spec": {"stopRequested": True}, "metadata": {"labels": {"a": "b"}}},
        )
    )
    assert patched["status"] == {"phase": "Running"}
    assert "stopRequested" not in patched["spec"]
    assert "labels" not in patched["metadata"]


async def test_main_endpoint_ignores_status(http: aiohttp.ClientSession) -> None:
    created = await _json(await http.post(WFS, json=dict(workflow_manifest("wf1"), status={"phase": "Fake"})))
    assert "status" not in created  # status is dropped on create, as real Kubernetes does
    await http.patch(f"{WFS}/wf1/status", json={"status": {"phase": "Queued"}}, headers=MERGE)
    patched = await _json(
        await http.patch(
            f"{WFS}/wf1", headers=MERGE, json={"status": {"phase": "Succeeded"}, "spec": {"stopRequested": True}}
        )
    )
    assert patched["status"] == {"phase": "Queued"}
    assert patched["spec"]["stopRequested"] is True


async def test_put_on_status_replaces_only_status(http: aiohttp.ClientSession) -> None:
    created = await _json(await http.post(WFS, json=workflow_manifest("wf1", owner="me")))
    replaced = await _json(await http.put(f"{WFS}/wf1/status", json=dict(created, spec={}, status={"phase": "x"})))
    assert replaced["status"] == {"phase": "x"}
    assert replaced["spec"]["owner"] == "me"


async def test_json_patch_applies_operations(http: aiohttp.ClientSession) -> None:
    await http.post(CMS, json={"metadata": {"name": "a"}, "data": {"k": "1"}})
    patched = await _json(
        await http.patch(
            f"{CMS}/a",
            headers={"Content-Type": "application/json-patch+json"},
            json=[{"op": "replace", "path": "/data/k", "value": "2"}],
        )
    )
    assert patched["data"] == {"k": "2"}


async def test_strategic_merge_patch_is_refused_for_custom_resources(http: aiohttp.ClientSession) -> None:
    await http.post(WFS, json=workflow_manifest("wf1"))
    response = await http.patch(
        f"{WFS}/wf1", json={"spec": {}}, headers={"Content-Type": "application/strategic-merge-patch+json"}
    )
    assert response.status == 415


async def test_delete_with_finalizers_sets_deletion_timestamp_then_removes(http: aiohttp.ClientSession) -> None:
    await http.post(WFS, json=dict(workflow_manifest("wf1"), metadata={"name": "wf1", "finalizers": ["x/y"]}))
    marked = await _json(await http.delete(f"{WFS}/wf1"))
    assert marked["metadata"]["deletionTimestamp"]
    assert (await http.get(f"{WFS}/wf1")).status == 200
    await http.patch(f"{WFS}/wf1", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert (await http.get(f"{WFS}/wf1")).status == 404


async def test_finalizers_cannot_be_added_while_deleting(cluster: EmbeddedCluster) -> None:
    spec = cluster.spec("wf")
    await cluster.create(dict(workflow_manifest("wf1"), metadata={"name": "wf1", "finalizers": ["a/b"]}))
    await cluster.delete("wf", "wf1")
    updated = cluster.api.update(
        spec, "ocean-compute", "wf1", lambda o: {**o, "metadata": {**o["metadata"], "finalizers": ["a/b", "c/d"]}}
    )
    assert updated["metadata"]["finalizers"] == ["a/b"]


async def test_request_log_records_writes_with_bodies(cluster: EmbeddedCluster, http: aiohttp.ClientSession) -> None:
    await http.post(CMS, json={"metadata": {"name": "a"}})
    await http.get(f"{CMS}/missing", params={"x": "1"})
    post, get = cluster.request_log[-2:]
    assert (post.method, post.path, post.status, post.body) == ("POST", CMS, 201, {"metadata": {"name": "a"}})
    assert (get.method, get.status, get.query, get.body) == ("GET", 404, {"x": "1"}, None)
    assert post.time <= get.time


async def _read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    async with asyncio.timeout(10):
        while len(events) < count:
            event = json.loads(await response.content.readline())
            events.append((event["type"], event["object"]["metadata"]["name"]))
    return events


async def test_watch_from_resource_version_streams_only_later_changes(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession
) -> None:
    await cluster.create({"kind": "ConfigMap", "metadata": {"name": "before"}})
    listing = await _json(await http.get(CMS))
    async with http.get(
        CMS,
        params={
            "watch": "true",
            "resourceVersion": listing["metadata"]["resourceVersion"],
            "allowWatchBookmarks": "true",
        },
    ) as stream:
        await cluster.create({"kind": "ConfigMap", "metadata": {"name": "after"}})
        await cluster.delete("cm", "before")
        assert await _read_events(stream, 2) == [("ADDED", "after"), ("DELETED", "before")]


async def test_watch_without_resource_version_starts_with_existing_objects(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession
) -> None:
    await cluster.create({"kind": "ConfigMap", "metadata": {"name": "old"}})
    async with http.get(CMS, params={"watch": "true"}) as stream:
        await cluster.create({"kind": "ConfigMap", "metadata": {"name": "new"}})
        assert await _read_events(stream, 2) == [("ADDED", "old"), ("ADDED", "new")]


async def test_watch_delivers_status_patches_and_finalizer_deletions(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession
) -> None:
    await cluster.create(dict(workflow_manifest("wf1"), metadata={"name": "wf1", "finalizers": ["a/b"]}))
    async with http.get(WFS, params={"watch": "true", "resourceVersion": str(cluster.api.resource_version)}) as st:
        await http.patch(f"{WFS}/wf1/status", json={"status": {"phase": "Running"}}, headers=MERGE)
        await http.delete(f"{WFS}/wf1")
        await http.patch(f"{WFS}/wf1", json={"metadata": {"finalizers": None}}, headers=MERGE)
        assert await _read_events(st, 4) == [
            ("MODIFIED", "wf1"),
            ("MODIFIED", "wf1"),
            ("MODIFIED", "wf1"),
            ("DELETED", "wf1"),
        ]


async def test_watch_ends_after_timeout_seconds(http: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(10):
        async with http.get(CMS, params={"watch": "true", "timeoutSeconds": "0.2"}) as stream:
            assert await stream.read() == b""


async def test_watch_from_expired_resource_version_is_410(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    monkeypatch.setattr("operator_engine.devcluster.apiserver.HISTORY_LIMIT", 2)
    for index in range(4):
        await cluster.create({"kind": "ConfigMap", "metadata": {"name": f"cm{index}"}})
    async with http.get(CMS, params={"watch": "true", "resourceVersion": "1"}) as stream:
        event = json.loads(await stream.content.readline())
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
