"""
Just enough OpenAPI for ``kubectl apply`` without ``--validate=false``.

kubectl (1.27+) validates by asking the server to (``fieldValidation=Strict``)
when the server's OpenAPI v3 document says its PATCH operations accept the
``fieldValidation`` query parameter; otherwise it downloads the OpenAPI v2
document (protobuf only) and validates client-side. This module serves:

* ``/openapi/v3``: the index of group-versions;
* ``/openapi/v3/api/v1``, ``/openapi/v3/apis/<group>/<version>``: paths for
  each served resource, each operation tagged with its
  ``x-kubernetes-group-version-kind`` and the ``fieldValidation`` parameter
  (no schemas: kubectl then uses JSON merge patches for custom resources, as
  it does for any resource it has no schema for);
* ``/openapi/v2``: an empty Swagger 2.0 document in protobuf, so that
  clients that fall back to it find no schema and skip client-side checks.

The embedded server does NOT enforce ``fieldValidation`` (unknown fields are
kept, as with ``fieldValidation=Ignore``); real Kubernetes would reject them
under ``Strict`` for resources with a structural schema.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from operator_engine.devcluster.resources import ResourceSpec

__all__ = ["openapi_v3_index", "openapi_v3_group_version", "OPENAPI_V2_PROTOBUF", "gv_path"]

#: An openapi_v2.Document protobuf with only ``swagger: "2.0"`` (field 1) and an Info (field 2) titled Kubernetes.
OPENAPI_V2_PROTOBUF = b"\n\x032.0" + b"\x12\x0e\n\nKubernetes\x12\x00"


def gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _gv_doc(group: str, version: str, specs: Iterable[ResourceSpec]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    query = {"in": "query", "schema": {"type": "string", "uniqueItems": True}}
    params_write = [
        {"name": "fieldValidation", **query},
        {"name": "fieldManager", **query},
        {"name": "dryRun", **query},
    ]
    for spec in specs:
        gvk = {"group": spec.group, "version": spec.version, "kind": spec.kind}
        base = (
            "/" + gv_path(group, version) + ("/namespaces/{namespace}" if spec.namespaced else "") + f"/{spec.plural}"
        )

        def op(action: str, writes: bool, name: str, spec: Any = spec, gvk: dict[str, str] = gvk) -> dict[str, Any]:
            return {
                "operationId": f"{action}{spec.kind}{name}",
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params_write if writes else [],
                "responses": {"200": {"description": "OK"}},
            }

        paths[base] = {"get": op("list", False, "List"), "post": op("post", True, "")}
        paths[base + "/{name}"] = {
            "get": op("get", False, ""),
            "put": op("put", True, ""),
            "patch": op("patch", True, ""),
            "delete": op("delete", False, ""),
        }
        if spec.has_status:
            paths[base + "/{name}/status"] = {
                "get": op("get", False, "Status"),
                "put": op("put", True, "Status"),
                "patch": op("patch", True, "Status"),
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _group_versions(specs: Iterable[ResourceSpec]) -> dict[tuple[str, str], list[ResourceSpec]]:
    grouped: dict[tuple[str, str], list[ResourceSpec]] = {}
    for spec in specs:
        grouped.setdefault((spec.group, spec.version), []).append(spec)
    return grouped


def openapi_v3_index(specs: Iterable[ResourceSpec]) -> dict[str, Any]:
    paths = {}
    for (group, version), members in sorted(_group_versions(specs).items()):
        doc = json.dumps(_gv_doc(group, version, members), sort_keys=True)
        digest = hashlib.sha512(doc.encode()).hexdigest()[:64].upper()
        paths[gv_path(group, version)] = {"serverRelativeURL": f"/openapi/v3/{gv_path(group, version)}?hash={digest}"}
    return {"paths": paths}


def openapi_v3_group_version(specs: Iterable[ResourceSpec], path: str) -> dict[str, Any] | None:
    """The document of ``path`` (``api/v1`` or ``apis/<group>/<version>``), None if no such group-version."""
    for (group, version), members in _group_versions(specs).items():
        if gv_path(group, version) == path.strip("/"):
            return _gv_doc(group, version, members)
    return None
