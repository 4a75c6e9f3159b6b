"""The embedded API server nests JSON as deep as a real one: 10000 levels stored, deeper refused with 400.

kube-apiserver decodes bodies with Go's encoding/json, whose limit is 10000
levels; the operator must cope with anything up to that (docs/SECURITY.md §4), so
the embedded server must neither refuse less nor crash on more.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from operator_engine.devcluster import EmbeddedCluster

from .conftest import NS
from .helpers import workflow_manifest

PATH = f"/apis/oceanprotocol.com/v1alpha/namespaces/{NS}/workflows"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


async def post(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(PATH, data=json.dumps(body), headers={"Content-Type": "application/json"}) as response:
        return response.status, json.loads(await response.text())


async def test_a_body_as_deep_as_go_json_allows_is_stored_and_served(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession
) -> None:
    # 3 levels of envelope (object, spec, x) plus 9995: 9998 in all, under Go's 10000.
    code, stored = await post(http, workflow_manifest("deep", x=nested(9_995)))
    assert code == 201, stored
    async with http.get(f"{PATH}/deep") as response:
        assert response.status == 200
        assert json.loads(await response.text())["spec"]["x"] == nested(9_995)


async def test_a_body_deeper_than_go_json_allows_is_refused_with_400(
    cluster: EmbeddedCluster, http: aiohttp.ClientSession
) -> None:
    code, answer = await post(http, workflow_manifest("too-deep", x=nested(10_001)))
    assert code == 400, answer
    assert answer["reason"] == "BadRequest" and "exceeded max depth" in answer["message"], answer
    assert await cluster.get("wf", "too-deep") is None
