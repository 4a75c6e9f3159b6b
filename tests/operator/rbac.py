"""
What the operator asked the API server for, in RBAC terms, and what its Role grants.

The embedded API server logs every HTTP request it answers (``request_log``).
In the operator tests the operator is the only HTTP client (the tests act on
the store directly), so that log is exactly what the operator used. Each
request maps to one (apiGroup, resource, verb) as the real API server's
authorizer sees it:

    GET item -> get · GET collection -> list · GET ?watch=true -> watch
    POST -> create · PUT -> update · PATCH -> patch
    DELETE item -> delete · DELETE collection -> deletecollection

with a subresource as ``resource/sub`` (``workflows/status``, ``pods/log``).
A write that sets ``blockOwnerDeletion`` on an ownerReference also needs
``update`` on the owner's ``finalizers`` subresource (``owner_finalizer_uses``).
Discovery paths (``/api``, ``/apis/GROUP/VERSION``, ``/version``) are no
resources: every authenticated user may read them on a real cluster (the
``system:discovery`` ClusterRole), so a Role neither can nor needs to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from operator_engine.devcluster import RequestRecord, request_attributes

ROOT = Path(__file__).resolve().parents[2]
ROLE_FILE = ROOT / "kubernetes" / "binding.yml"
ROLE_NAME = "ocean-compute-operator"

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
Use = tuple[str, str, str, str | None]  # a Grant and the object's name (None for collections)


class NotAResource(ValueError):
    """A request path that is neither a resource nor discovery: no Role can grant it."""


def _is_discovery(parts: list[str]) -> bool:
    return (
        parts in (["api"], ["apis"], ["version"], ["api", "v1"])
        or (len(parts) in (2, 3) and parts[0] == "apis")
        or parts[:1] in (["openapi"],)
    )


def use_of(record: RequestRecord) -> Use | None:
    """The RBAC (group, resource, verb) a request needs, with the object's name; None for discovery."""
    parts = [p for p in record.path.split("/") if p]
    if _is_discovery(parts):
        return None
    attributes = request_attributes(record.method, record.path, record.query.get("watch") in ("true", "1"))
    if attributes is None or attributes[2] is None:
        raise NotAResource(f"{record.method} {record.path}")
    group, resource, verb, name = attributes
    return group, resource, verb, name


def owner_finalizer_uses(record: RequestRecord, plural_of: Callable[[str], str]) -> set[Use]:
    """What setting ``blockOwnerDeletion`` on an ownerReference needs besides the write itself.

    A real API server with the OwnerReferencesPermissionEnforcement admission
    plugin (OpenShift, and clusters that follow the hardening guides) refuses a
    write that sets ``blockOwnerDeletion: true`` unless its author may
    ``update`` the owner's ``finalizers`` subresource. The embedded server
    does not check it, so it is read from the request body here.
    """
    if record.method not in ("POST", "PUT", "PATCH") or not isinstance(record.body, dict):
        return set()
    uses: set[Use] = set()
    for ref in (record.body.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("blockOwnerDeletion"):
            group = str(ref.get("apiVersion", "")).rpartition("/")[0]
            uses.add((group, f"{plural_of(str(ref['kind']))}/finalizers", "update", ref.get("name")))
    return uses


def requested(records: Iterable[RequestRecord], plural_of: Callable[[str], str]) -> set[Use]:
    """Every use the requests made, faulted ones included (they were asked for).

    ``plural_of(kind)`` names an owner's resource (``cluster.spec(kind).plural``).
    """
    uses: set[Use] = set()
    for record in records:
        if (use := use_of(record)) is not None:
            uses.add(use)
            uses |= owner_finalizer_uses(record, plural_of)
    return uses


def role() -> dict[str, Any]:
    for doc in yaml.safe_load_all(ROLE_FILE.read_text(encoding="utf-8")):
        if doc and doc.get("kind") == "Role" and doc["metadata"]["name"] == ROLE_NAME:
            return dict(doc)
    raise LookupError(f"no Role {ROLE_NAME} in {ROLE_FILE}")


def granted(role_doc: dict[str, Any] | None = None) -> dict[Grant, set[str] | None]:
    """What the Role's rules grant: per (group, resource, verb), the object names it is limited to, or None (any).

    The Role has no wildcard (tests/manifests/test_manifest_rbac.py says so), so
    each rule is read literally, as the API server's authorizer reads it.
    """
    out: dict[Grant, set[str] | None] = {}
    for rule in (role_doc or role())["rules"]:
        names = set(rule["resourceNames"]) if rule.get("resourceNames") else None
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    key = (group, resource, verb)
                    if names is None or (key in out and out[key] is None):
                        out[key] = None  # some rule grants it for any name
                    else:
                        out[key] = (out.get(key) or set()) | names
    return out


def refused(uses: Iterable[Use], grants: dict[Grant, set[str] | None]) -> set[Use]:
    """The uses the Role would refuse (403 on a real cluster)."""
    out = set()
    for group, resource, verb, name in uses:
        key = (group, resource, verb)
        if key not in grants or grants[key] is not None and name not in grants[key]:
            out.add((group, resource, verb, name))
    return out


def unused(uses: Iterable[Use], grants: dict[Grant, set[str] | None]) -> set[tuple[str, str, str, str | None]]:
    """What the Role grants that no use needed: a verb never used, or a resourceName never touched."""
    uses = set(uses)
    used_keys = {(g, r, v) for g, r, v, _ in uses}
    out: set[tuple[str, str, str, str | None]] = set()
    for key, names in grants.items():
        if key not in used_keys:
            out.add((*key, None))
        elif names is not None:
            touched = {n for g, r, v, n in uses if (g, r, v) == key}
            out.update((*key, n) for n in names - touched)
    return out


def describe(uses: Iterable[tuple[str, str, str, str | None]]) -> str:
    return (
        ", ".join(f"{g or 'core'}/{r}:{v}" + (f"[{n}]" if n else "") for g, r, v, n in sorted(uses, key=str))
        or "nothing"
    )


class Usage:
    """What the operator requested across the tests of a session, and in which test first."""

    def __init__(self) -> None:
        self.first_seen: dict[Use, str] = {}

    def add(self, test: str, uses: Iterable[Use]) -> None:
        for use in uses:
            self.first_seen.setdefault(use, test)

    def used(self) -> set[Use]:
        return set(self.first_seen)
