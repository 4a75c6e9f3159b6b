"""labelSelector and fieldSelector on lists and watches, as the real API server filters them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from operator_engine.devcluster import EmbeddedCluster, LabelSelector

CMS = "/api/v1/namespaces/ocean-compute/configmaps"
LABELS = {"a": {"app": "x", "tier": "db"}, "b": {"app": "y"}, "c": {}}


@pytest.fixture
async def labelled(cluster: EmbeddedCluster) -> EmbeddedCluster:
    for name, labels in LABELS.items():
        await cluster.create({"kind": "ConfigMap", "metadata": {"name": name, "labels": labels}})
    return cluster


@pytest.mark.parametrize(
    "selector, names",
    [
        ("app=x", ["a"]),
        ("app==x", ["a"]),
        ("app!=x", ["b", "c"]),
        ("app", ["a", "b"]),
        ("!app", ["c"]),
        ("app in (x, y)", ["a", "b"]),
        ("app notin (x)", ["b", "c"]),
        ("app=x,tier=db", ["a"]),
        ("app in (x,y),!tier", ["b"]),
    ],
)
async def test_label_selector_on_list(
    labelled: EmbeddedCluster, http: aiohttp.ClientSession, selector: str, names: list[str]
) -> None:
    listing = await (await http.get(CMS, params={"labelSelector": selector})).json()
    assert [item["metadata"]["name"] for item in listing["items"]] == names


@pytest.mark.parametrize(
    "selector, names",
    [
        ("metadata.name=b", ["b"]),
        ("metadata.name!=b", ["a", "c"]),
        ("metadata.namespace=ocean-compute,metadata.name=c", ["c"]),
        ("metadata.namespace=default", []),
    ],
)
async def test_field_selector_on_list(
    labelled: EmbeddedCluster, http: aiohttp.ClientSession, selector: str, names: list[str]
) -> None:
    listing = await (await http.get(CMS, params={"fieldSelector": selector})).json()
    assert [item["metadata"]["name"] for item in listing["items"]] == names


async def test_malformed_selector_is_400(http: aiohttp.ClientSession) -> None:
    assert (await http.get(CMS, params={"labelSelector": "a in x"})).status == 400


async def test_label_selector_on_watch(labelled: EmbeddedCluster, http: aiohttp.ClientSession) -> None:
    async with http.get(CMS, params={"watch": "true", "labelSelector": "app=x"}) as stream:
        await labelled.create({"kind": "ConfigMap", "metadata": {"name": "d", "labels": {"app": "y"}}})
        await labelled.create({"kind": "ConfigMap", "metadata": {"name": "e", "labels": {"app": "x"}}})
        async with asyncio.timeout(10):
            events = [json.loads(await stream.content.readline()) for _ in range(2)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "e")]


async def test_field_selector_on_watch(labelled: EmbeddedCluster, http: aiohttp.ClientSession) -> None:
    async with http.get(
        CMS,
        params={
            "watch": "true",
            "fieldSelector": "metadata.name=e",
            "resourceVersion": str(labelled.api.resource_version),
        },
    ) as stream:
        await labelled.create({"kind": "ConfigMap", "metadata": {"name": "d"}})
        await labelled.create({"kind": "ConfigMap", "metadata": {"name": "e"}})
        async with asyncio.timeout(10):
            event = json.loads(await stream.content.readline())
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "e")


async def test_watch_sees_relabelled_object_leave_and_enter_the_selection(
    labelled: EmbeddedCluster, http: aiohttp.ClientSession
) -> None:
    spec = labelled.spec("configmap")
    async with http.get(
        CMS, params={"watch": "true", "labelSelector": "app=x", "resourceVersion": str(labelled.api.resource_version)}
    ) as stream:
        relabel = lambda app: lambda o: {**o, "metadata": {**o["metadata"], "labels": {"app": app}}}  # noqa: E731
        labelled.api.update(spec, "ocean-compute", "a", relabel("z"))
        labelled.api.update(spec, "ocean-compute", "b", relabel("x"))
        async with asyncio.timeout(10):
            events = [json.loads(await stream.content.readline()) for _ in range(2)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("DELETED", "a"), ("ADDED", "b")]


def test_not_equal_matches_objects_without_the_label() -> None:
    assert LabelSelector.parse("app!=x").matches({"metadata": {}})
