"""
Server-side printing: ``meta.k8s.io/v1`` Table answers, as ``kubectl get`` asks for them.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...``
on get and list; the real API server then answers with a Table whose columns
are the resource's printer columns: a CRD's ``additionalPrinterColumns``
(plus Name first and, when the CRD declares none, Age), or the built-in
printers of kube-apiserver for built-in kinds. Cells of ``type: date`` are
printed as a relative age ("5m10s"), as the real server's table convertor does.

The Workflow columns are those of ``kubernetes/crd.yaml``; a CRD object
stored in the cluster (``kubectl apply -f kubernetes/crd.yaml``) takes
precedence for its resource.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from typing import Any

from operator_engine.devcluster.resources import ResourceSpec

__all__ = ["wants_table", "to_table", "human_duration", "WORKFLOW_COLUMNS"]

NAME_COLUMN: dict[str, Any] = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace.",
}
AGE_COLUMN: dict[str, Any] = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "priority": 0,
    "description": "CreationTimestamp is the time the object was created.",
}

#: The additionalPrinterColumns of kubernetes/crd.yaml.
WORKFLOW_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Status", "type": "string", "jsonPath": ".status.statusText"},
    {"name": "Code", "type": "integer", "jsonPath": ".status.statusCode"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Started", "type": "date", "jsonPath": ".status.dateStarted", "priority": 1},
    {"name": "Finished", "type": "date", "jsonPath": ".status.dateFinished", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def wants_table(accept: str) -> bool:
    """Whether the Accept header asks for a meta.k8s.io/v1 Table (kubectl get does)."""
    for part in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in part.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
    return False


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        days = h // 24
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{h // 24 // 365}y"


def _lookup(obj: Any, path: str) -> Any:
    """A simple JSONPath (``.a.b[0].c``), as printer columns use."""
    value = obj
    for name, index in _SEGMENT.findall(path.strip().lstrip("{").rstrip("}").lstrip(".")):
        if name:
            if not isinstance(value, dict) or name not in value:
                return None
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                return None
            value = value[int(index)]
    return value


def _age(timestamp: Any, now: datetime.datetime) -> str | None:
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    return human_duration((now - then).total_seconds())


def _cell(column: dict[str, Any], value: Any, now: datetime.datetime) -> Any:
    if value is None:
        return None
    kind = column.get("type", "string")
    if kind == "date":
        return _age(value, now)
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"))
    return str(value) if kind == "string" else value


# ------------------------------------------------------------------ built-in printers (the common ones)


def _pod_cells(pod: dict[str, Any], now: datetime.datetime) -> list[Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    status = (pod.get("status") or {}).get("reason") or (pod.get("status") or {}).get("phase") or "Pending"
    for s in statuses:
        state = s.get("state") or {}
        if "terminated" in state and state["terminated"].get("reason"):
            status = state["terminated"]["reason"]
        elif "waiting" in state and state["waiting"].get("reason"):
            status = state["waiting"]["reason"]
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        status = "Terminating"
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(containers)}",
        status,
        restarts,
        _age(pod["metadata"].get("creationTimestamp"), now),
    ]


def _job_cells(job: dict[str, Any], now: datetime.datetime) -> list[Any]:
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    state = "Complete" if "Complete" in conditions else "Failed" if "Failed" in conditions else "Running"
    completions = (job.get("spec") or {}).get("completions", 1)
    duration = None
    if status.get("startTime"):
        start = datetime.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
        end = (
            datetime.datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
            if status.get("completionTime")
            else now
        )
        duration = human_duration((end - start).total_seconds())
    return [
        job["metadata"]["name"],
        state,
        f"{status.get('succeeded', 0)}/{completions}",
        duration,
        _age(job["metadata"].get("creationTimestamp"), now),
    ]


_BUILTIN: dict[tuple[str, str, str], tuple[list[dict[str, Any]], Any]] = {
    ("", "v1", "pods"): (
        [
            NAME_COLUMN,
            {"name": "Ready", "type": "string", "priority": 0},
            {"name": "Status", "type": "string", "priority": 0},
            {"name": "Restarts", "type": "string", "priority": 0},
            {**AGE_COLUMN},
        ],
        _pod_cells,
    ),
    ("batch", "v1", "jobs"): (
        [
            NAME_COLUMN,
            {"name": "Status", "type": "string", "priority": 0},
            {"name": "Completions", "type": "string", "priority": 0},
            {"name": "Duration", "type": "string", "priority": 0},
            {**AGE_COLUMN},
        ],
        _job_cells,
    ),
}


def custom_columns(spec: ResourceSpec, crds: Iterable[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The additionalPrinterColumns for a custom resource: from a stored CRD, else the declared ones."""
    for crd in crds:
        crd_spec = crd.get("spec") or {}
        if crd_spec.get("group") != spec.group or (crd_spec.get("names") or {}).get("plural") != spec.plural:
            continue
        for version in crd_spec.get("versions") or []:
            if version.get("name") == spec.version:
                columns = version.get("additionalPrinterColumns")
                if columns:
                    return list(columns)
    if spec.key == ("oceanprotocol.com", "v1alpha", "workflows"):
        return list(WORKFLOW_COLUMNS)
    return None


def to_table(
    spec: ResourceSpec,
    objects: list[dict[str, Any]],
    *,
    resource_version: str,
    now: datetime.datetime,
    crds: Iterable[dict[str, Any]] = (),
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of ``objects``."""
    if spec.key in _BUILTIN:
        definitions, cells_of = _BUILTIN[spec.key]
        rows_cells = [cells_of(obj, now) for obj in objects]
    else:
        columns = custom_columns(spec, crds) if not spec.builtin else None
        extra = columns if columns is not None else [AGE_COLUMN]
        definitions = [NAME_COLUMN] + [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in extra
        ]
        rows_cells = [
            [obj["metadata"]["name"]] + [_cell(c, _lookup(obj, c.get("jsonPath", "")), now) for c in extra]
            for obj in objects
        ]
    rows = []
    for obj, cells in zip(objects, rows_cells, strict=True):
        row: dict[str, Any] = {"cells": cells}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"format": "", "description": "", **d} for d in definitions],
        "rows": rows,
    }
