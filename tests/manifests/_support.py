"""Shared helpers for the manifest tests: loading the YAML files and turning
the CRD's structural openAPIV3Schema into a JSON Schema."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = ROOT / "kubernetes"
K8S_INSTALL_DIR = ROOT / "k8s_install"
MANIFEST_DIRS = (KUBERNETES_DIR, K8S_INSTALL_DIR)
CRD_FILE = KUBERNETES_DIR / "crd.yaml"
OPERATOR_FILE = KUBERNETES_DIR / "operator.yml"
WORKFLOW_SAMPLE = K8S_INSTALL_DIR / "workflow-1.yaml"
NAMESPACE = "ocean-compute"

# Kinds defined by our CRD; everything else must be a built-in kind.
CUSTOM_KINDS = {("oceanprotocol.com/v1alpha", "WorkFlow")}


KUSTOMIZATION = KUBERNETES_DIR / "kustomization.yaml"


def yaml_files() -> list[Path]:
    """The manifest files (kustomize's own kustomization.yaml is no object: test_kustomization.py covers it)."""
    files: list[Path] = []
    for directory in MANIFEST_DIRS:
        files += sorted(
            p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.name != KUSTOMIZATION.name
        )
    return files


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def all_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in yaml_files():
        for doc in load_docs(path):
            yield path, doc


def doc_id(path: Path, doc: dict[str, Any]) -> str:
    return f"{path.parent.name}/{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def is_custom(doc: dict[str, Any]) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS


def find_doc(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    for doc in load_docs(path):
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise LookupError(f"no {kind} {name or ''} in {path}")


def crd() -> dict[str, Any]:
    return find_doc(CRD_FILE, "CustomResourceDefinition")


def crd_version(name: str = "v1alpha") -> dict[str, Any]:
    for version in crd()["spec"]["versions"]:
        if version["name"] == name:
            return version
    raise LookupError(name)


def crd_openapi_schema() -> dict[str, Any]:
    return crd_version()["schema"]["openAPIV3Schema"]


# --- openAPIV3Schema (structural, Kubernetes flavour) -> JSON Schema ---------

_COPIED = (
    "enum",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "multipleOf",
)


def _convert(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    for key in _COPIED:
        if key in node:
            out[key] = copy.deepcopy(node[key])
    if node.get("nullable") and "enum" in out:
        out["enum"] = out["enum"] + [None]
    if "properties" in node:
        out["properties"] = {k: _convert(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = _convert(node["items"])
    if node.get("type") == "object":
        if node.get("x-kubernetes-preserve-unknown-fields"):
            pass  # unknown fields are kept: anything goes
        elif "additionalProperties" in node:
            extra = node["additionalProperties"]
            out["additionalProperties"] = extra if isinstance(extra, bool) else _convert(extra)
        else:
            # A structural schema prunes (and strict field validation rejects)
            # every field it does not declare.
            out["additionalProperties"] = False
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in node:
            out.setdefault("allOf", []).append({combinator: [_convert(sub) for sub in node[combinator]]})
    if "not" in node:
        out["not"] = _convert(node["not"])
    return out


def openapi_to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a CRD's root openAPIV3Schema into a JSON Schema (2020-12)."""
    out = _convert(schema)
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    # The API server validates ObjectMeta itself; a CRD may not describe it.
    out.setdefault("properties", {})["metadata"] = {"type": "object"}
    return out


def workflow_validator():
    import jsonschema

    cls = jsonschema.Draft202012Validator
    schema = openapi_to_jsonschema(crd_openapi_schema())
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
