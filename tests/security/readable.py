"""What a pod can read, resolved from rendered manifests as the kubelet would resolve it.

A pod reads its container's image, command, args and env (plain values,
`valueFrom` references resolved to the ConfigMap or Secret data, `envFrom`
whole objects), and the files of its volumes: a ConfigMap or Secret volume
projects its `items` (every key without them), a `subPath` mount narrows
that to one file or folder, a `projected` volume joins its sources and a
`downwardAPI` volume shows the pod's own metadata. The contents of a
PersistentVolumeClaim are written at run time, not by the manifests.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def _object_data(manifest: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's keys as text (Secret `data` is base64)."""
    values = {k: str(v) for k, v in (manifest.get("data") or {}).items()}
    if manifest["kind"] == "Secret":
        values = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in values.items()}
        values.update({k: str(v) for k, v in (manifest.get("stringData") or {}).items()})
    for key, value in (manifest.get("binaryData") or {}).items():
        values[key] = base64.b64decode(value).decode("utf-8", "replace")
    return values


def _lookup(objects: dict[tuple[str, str], dict[str, str]], kind: str, name: str) -> dict[str, str]:
    if (kind, name) not in objects:
        raise AssertionError(f"the pod refers to {kind} {name!r}, which the operator does not create")
    return objects[(kind, name)]


def _projected(values: dict[str, str], items: list[dict[str, Any]] | None) -> dict[str, str]:
    """File path -> content of a ConfigMap/Secret volume."""
    if not items:
        return dict(values)
    return {item["path"]: values[item["key"]] for item in items}


def _volume_files(
    volume: dict[str, Any], pod: dict[str, Any], objects: dict[tuple[str, str], dict[str, str]]
) -> dict[str, str]:
    if "configMap" in volume:
        ref = volume["configMap"]
        return _projected(_lookup(objects, "ConfigMap", ref["name"]), ref.get("items"))
    if "secret" in volume:
        ref = volume["secret"]
        return _projected(_lookup(objects, "Secret", ref["secretName"]), ref.get("items"))
    if "projected" in volume:
        files: dict[str, str] = {}
        for source in volume["projected"].get("sources") or []:
            files.update(_volume_files(source, pod, objects))
        return files
    if "downwardAPI" in volume:
        return {"metadata": json.dumps(pod.get("metadata") or {})}
    return {}  # emptyDir, persistentVolumeClaim: nothing from the manifests


def readable_by(job: dict[str, Any], children: list[dict[str, Any]]) -> list[str]:
    """Every text the pods of `job` can read that comes from the manifests."""
    objects = {
        (c["kind"], c["metadata"]["name"]): _object_data(c) for c in children if c["kind"] in ("ConfigMap", "Secret")
    }
    pod = job["spec"]["template"]
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    texts = [json.dumps(job), json.dumps(pod.get("metadata") or {})]  # the Job itself, to be strict
    for container in (spec.get("initContainers") or []) + spec["containers"]:
        texts += [container["image"], *container.get("command", []), *container.get("args", [])]
        for item in container.get("env") or []:
            if "value" in item:
                texts.append(item["value"])
            source = item.get("valueFrom") or {}
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in source:
                    texts.append(_lookup(objects, kind, source[field]["name"])[source[field]["key"]])
        for source in container.get("envFrom") or []:
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if field in source:
                    texts += _lookup(objects, kind, source[field]["name"]).values()
        for mount in container.get("volumeMounts") or []:
            files = _volume_files(volumes[mount["name"]], pod, objects)
            sub = mount.get("subPath")
            if sub:
                files = {p: v for p, v in files.items() if p == sub or p.startswith(sub.rstrip("/") + "/")}
            texts += files.values()
    return texts
