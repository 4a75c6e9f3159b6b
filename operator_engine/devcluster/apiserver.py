"""
An in-memory Kubernetes API server over real HTTP, built on KMock's scaffold.

KMock serves the HTTP plumbing and API discovery (``/api``, ``/apis/...``)
that kopf, kubectl and the ``kubernetes`` client negotiate first. Its
``KubernetesEmulator`` store, however, is a JSON dict store, not an API
server: no uid, creationTimestamp, resourceVersion or generation, no
selectors, no status subresource, no ``kind`` on lists, misparsed
``/api/v1/namespaces/NAME`` paths, no PUT, one merge semantics for every
PATCH type, and watches that ignore ``resourceVersion``. Its mutations live
inside ``KubernetesEmulator._handle``, so fixing them means replacing that
method anyway; this class therefore extends ``KubernetesScaffold`` (discovery,
errors) and owns the store, so that every emulated API-server rule lives here,
in one place, each commented with what real Kubernetes does.

Writes made in-process through :meth:`ApiServer.create` and friends follow the
same rules as HTTP writes, but are never logged or faulted: that is the
"admin" path used by the controllers and by tests.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import copy
import dataclasses
import datetime
import json
import random
import secrets
import string
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any

import aiohttp.web
import attrs
import kmock

from operator_engine.devcluster import patches
from operator_engine.devcluster.openapi import OPENAPI_V2_PROTOBUF, openapi_v3_group_version, openapi_v3_index
from operator_engine.devcluster.resources import DEFAULT_RESOURCES, NAMESPACES, PODS, ResourceSpec
from operator_engine.devcluster.selectors import FieldSelector, LabelSelector, SelectorError
from operator_engine.devcluster.tables import to_table, wants_table
from operator_engine.model import KUBERNETES_MAX_JSON_DEPTH

__all__ = [
    "ApiServer",
    "ApiError",
    "FOREGROUND_FINALIZER",
    "RequestRecord",
    "WatchEvent",
    "FaultInjector",
    "BYPASS_FAULTS_HEADER",
    "now_rfc3339",
]

#: Requests carrying this header (any value) are never faulted: for a test's own HTTP client.
BYPASS_FAULTS_HEADER = "X-Devcluster-Bypass-Faults"

#: How many watch events are kept for watches that resume from a resourceVersion.
#: Real Kubernetes keeps a similar window (etcd compaction, the watch cache)
#: and answers older resourceVersions with 410 Gone, after which clients relist.
HISTORY_LIMIT = 50_000

_NAME_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits

#: The finalizer a foreground deletion puts on the owner until its dependents are gone.
FOREGROUND_FINALIZER = "foregroundDeletion"
#: A pod's terminationGracePeriodSeconds when its spec gives none.
DEFAULT_GRACE_PERIOD = 30

ObjKey = tuple[tuple[str, str, str], str | None, str]


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object, as the real API server does."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, spec: ResourceSpec, name: str) -> ApiError:
        return cls(
            404,
            "NotFound",
            f'{spec.plural}{"." + spec.group if spec.group else ""} "{name}" not found',
            {"name": name, "group": spec.group, "kind": spec.plural},
        )


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as the server answered it (for assertions in tests)."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    time: float  # time.monotonic() when answered (for watches: when the stream started)
    body: Any = None  # the parsed JSON body of writes (POST/PUT/PATCH/DELETE), else None
    faulted: bool = False  # answered by the fault injector, never reached the store
    user_agent: str = ""  # the client's User-Agent header (tells apart clients of one server)


#: The RBAC verb of a request, by HTTP method (a GET without a name is a list, with watch=true a watch).
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_attributes(method: str, path: str, watch: bool) -> tuple[str, str, str | None, str | None] | None:
    """What RBAC and the audit log say a request is: (group, resource[/subresource], verb, name).

    None for a path that names no resource (discovery, /version, ...); the verb
    is None for a method Kubernetes has none for. As the API server's
    RequestInfo resolves it: /api/v1/... is the core group, /apis/GROUP/VERSION/...
    another; /namespaces/NS/ before a resource is the namespace, not the resource.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource; /namespaces/NAME[/sub] alone is the Namespace object
    resource, name = "/".join([rest[0], *rest[2:]]), (rest[1] if len(rest) > 1 else None)
    if method == "GET":
        verb: str | None = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _VERBS.get(method)
    return group, resource, verb, name


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """A change of one object: what watches stream and what controllers react to."""

    rv: int
    spec: ResourceSpec
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]  # never mutated after commit; copy before changing
    old: dict[str, Any] | None = None  # the previous state (MODIFIED/DELETED), for selector transitions


@dataclasses.dataclass
class _FaultRule:
    rate: float
    statuses: tuple[int, ...]
    methods: frozenset[str]
    path_contains: str | None
    rng: random.Random


#: Real Kubernetes decodes request bodies with Go's encoding/json, which refuses
#: nesting deeper than 10000 levels ("exceeded max depth", a 400); anything
#: shallower is stored, however deep. Python's json recurses once per level and
#: stops near sys.getrecursionlimit() (1000 by default), so this server raises
#: that limit (as the operator does) to store and serve what a real one would.
MAX_JSON_DEPTH = KUBERNETES_MAX_JSON_DEPTH
sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_JSON_DEPTH))


class FaultInjector:
    """
    Answers a seeded fraction of HTTP requests with an error before they reach the store.

    Deterministic given the seed and the order of requests. 429 responses carry
    ``Retry-After: 1`` as the real API server's priority-and-fairness throttling does.
    """

    def __init__(self) -> None:
        self._rule: _FaultRule | None = None
        self.injected = 0  # how many requests were faulted since the last inject()

    def inject(
        self,
        rate: float,
        statuses: Iterable[int] = (500, 429),
        methods: Collection[str] = ("POST", "PUT", "PATCH", "DELETE"),
        seed: int = 0,
        path_contains: str | None = None,
    ) -> None:
        """Fault a fraction ``rate`` of matching requests, answering with one of ``statuses`` in turn."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        self._rule = _FaultRule(
            rate, tuple(statuses), frozenset(m.upper() for m in methods), path_contains, random.Random(seed)
        )
        self.injected = 0

    def clear(self) -> None:
        self._rule = None

    def decide(self, method: str, path: str) -> int | None:
        """The error status to answer with, or None to serve the request normally."""
        rule = self._rule
        if rule is None or method.upper() not in rule.methods:
            return None
        if rule.path_contains is not None and rule.path_contains not in path:
            return None
        draw = rule.rng.random()
        choice = rule.rng.randrange(len(rule.statuses))
        if draw >= rule.rate:
            return None
        self.injected += 1
        return rule.statuses[choice]


def _json_depth(raw: bytes) -> int:
    """How deeply a JSON text nests (brackets inside strings do not count), scanned without recursion."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep: the common case, answered without a scan
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def now_rfc3339(clock: Callable[[], datetime.datetime]) -> str:
    # Kubernetes serialises metav1.Time with second precision, UTC, 'Z'.
    return clock().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesScaffold):
    """
    A stateful Kubernetes API server: serve it with ``kmock.Server(api)``.

    ``creation_index(uid)`` gives the order in which objects were created.
    ``creationTimestamp`` has second precision as in real Kubernetes, so
    objects created within one second tie on it; the creation index is the
    deterministic tie-breaker for tests (real Kubernetes has no such field:
    an operator should order by ``(creationTimestamp, name)``).
    """

    clock: Callable[[], datetime.datetime] = _utcnow
    specs: dict[tuple[str, str, str], ResourceSpec] = attrs.field(factory=dict, init=False)
    request_log: list[RequestRecord] = attrs.field(factory=list, init=False)
    faults: FaultInjector = attrs.field(factory=FaultInjector, init=False)
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)

    _store: dict[ObjKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    # Indexes of the store, kept by _commit and _remove, so that a list or a garbage-collector
    # lookup costs what it returns, not the size of the store (1,000 workflows leave tens of
    # thousands of objects: Jobs, Pods, Events...).
    _by_resource: dict[tuple[str, str, str], dict[ObjKey, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _by_label: dict[tuple[tuple[str, str, str], str, str], set[ObjKey]] = attrs.field(factory=dict, init=False)
    _by_owner: dict[str, set[ObjKey]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, ObjKey] = attrs.field(factory=dict, init=False)
    _creation_indexes: dict[str, int] = attrs.field(factory=dict, init=False)
    _creation_counter: int = attrs.field(default=0, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _history: list[WatchEvent] = attrs.field(factory=list, init=False)
    _history_rvs: list[int] = attrs.field(factory=list, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in DEFAULT_RESOURCES:
            self.declare(spec)

    # ------------------------------------------------------------------ resources

    def declare(self, spec: ResourceSpec) -> None:
        """Serve a resource and publish it in discovery with its verbs and subresources."""
        self.specs[spec.key] = spec
        # The 3-argument form: the string form misparses versions like `v1alpha`.
        self.resources[kmock.resource(spec.group, spec.version, spec.plural)] = kmock.ResourceInfo(
            kind=spec.kind,
            namespaced=spec.namespaced,
            singular=spec.singular,
            shortnames=set(spec.shortnames),
            subresources={"status"} if spec.has_status else set(),
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        """Discovery of one group/version, with two corrections to KMock's answer."""
        payload: dict[str, Any] = await super()._serve_version(request)  # type: ignore[assignment]
        # KMock names the core group's version '/v1'; kubectl then finds no core
        # resources at all. Real servers say 'v1'.
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        # Real subresources (jobs/status) support only get, patch and update,
        # and have neither short names nor a singular name (else kubectl warns that
        # `wf` "could also match lower priority resource workflows/status").
        for resource in payload["resources"]:
            if "/" in resource["name"]:
                resource["verbs"] = ["get", "patch", "update"]
                resource["singularName"] = ""
                resource.pop("shortNames", None)
        return payload

    def spec_for(self, kind_or_plural: str) -> ResourceSpec:
        """Find a resource by kind, plural, singular or short name (case-insensitive), as kubectl does."""
        wanted = kind_or_plural.lower()
        for spec in self.specs.values():
            if wanted in {spec.kind.lower(), spec.plural, spec.singular, *spec.shortnames}:
                if spec.group == "events.k8s.io":
                    continue  # `event` means the core v1 Event, as in kubectl
                return spec
        raise KeyError(f"unknown resource: {kind_or_plural!r}")

    # ------------------------------------------------------------------ reading

    @property
    def resource_version(self) -> int:
        return self._rv

    def creation_index(self, uid: str) -> int:
        return self._creation_indexes[uid]

    # kmock's get(url)/delete(url) are HTTP client shortcuts for a test that talks to the
    # emulator; neither kmock nor this project calls them on the server, which serves the
    # store through get()/delete() of its own signature instead.
    def get(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any]:  # type: ignore[override]
        """A copy of one object; ApiError 404 if absent."""
        return copy.deepcopy(self._stored(spec, namespace, name))

    def _stored(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any]:
        """The stored object itself (never to be mutated: for serving and reading); ApiError 404 if absent."""
        obj = self._store.get(self._key(spec, namespace, name))
        if obj is None:
            raise ApiError.not_found(spec, name)
        return obj

    def find_uid(self, uid: str) -> dict[str, Any] | None:
        key = self._uids.get(uid)
        return None if key is None else self._store[key]

    def list(
        self,
        spec: ResourceSpec,
        namespace: str | None = None,
        labels: LabelSelector | str | None = None,
        fields: FieldSelector | str | None = None,
    ) -> list[dict[str, Any]]:
        """Copies of the matching objects, sorted by namespace and name (etcd key order, as real lists)."""
        return [copy.deepcopy(obj) for obj in self._select(spec, namespace, labels, fields)]

    def _select(
        self,
        spec: ResourceSpec,
        namespace: str | None = None,
        labels: LabelSelector | str | None = None,
        fields: FieldSelector | str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """
        The stored matching objects themselves (never to be mutated), sorted as :meth:`list`.

        Candidates come from the narrowest index that applies: the name of a
        ``metadata.name=`` field selector, else the objects having the label of
        an equality (``=``, ``in``) requirement, else the resource's objects.
        """
        labels = labels if isinstance(labels, LabelSelector) else LabelSelector.parse(labels)
        fields = fields if isinstance(fields, FieldSelector) else FieldSelector.parse(fields)
        names = {value for path, equal, value in fields.terms if path == "metadata.name" and equal}
        candidates: Iterable[ObjKey]
        if names and (namespace is not None or not spec.namespaced):
            candidates = [self._key(spec, namespace, name) for name in names]
        else:
            indexed: builtins.list[set[ObjKey]] = [
                set().union(*(self._by_label.get((spec.key, r.key, v), ()) for v in r.values))
                for r in labels.requirements
                if r.op in ("=", "in")
            ]
            if indexed:
                narrowest: set[ObjKey] = min(indexed, key=len)
                candidates = narrowest
            else:
                candidates = self._by_resource.get(spec.key, {}).keys()
        found: builtins.list[tuple[str, str, dict[str, Any]]] = []
        for key in candidates:
            obj = self._store.get(key)
            if (
                obj is not None
                and key[0] == spec.key
                and (namespace is None or key[1] == namespace)
                and labels.matches(obj)
                and fields.matches(obj)
            ):
                found.append((key[1] or "", key[2], obj))
        found.sort(key=lambda item: (item[0], item[1]))
        return [obj for _, _, obj in found]

    # `builtins.list`: inside the class body, `list` is the method above.
    def dependents(self, owner_uid: str) -> builtins.list[tuple[ResourceSpec, dict[str, Any]]]:
        """Objects with an ownerReference to this uid (for the garbage collector), in key order."""
        keys = sorted(self._by_owner.get(owner_uid, ()), key=lambda key: (key[1] or "", key[2]))
        return [(self.specs[key[0]], self._store[key]) for key in keys]

    async def follow(self, since_rv: int) -> AsyncIterator[WatchEvent]:
        """
        Every change committed after ``since_rv``, then live changes until :meth:`close`.

        Event-driven: waiters sleep on an ``asyncio.Event`` that every commit
        sets. ApiError 410 if ``since_rv`` is older than the kept history.
        """
        if self._history_rvs and since_rv < self._history_rvs[0] - 1:
            raise ApiError(410, "Expired", f"too old resource version: {since_rv} ({self._history_rvs[0] - 1})")
        position = since_rv
        while not self._closing:
            changed = self._changed
            index = bisect.bisect_right(self._history_rvs, position)
            pending = self._history[index:]
            if not pending:
                await changed.wait()
                continue
            for event in pending:
                position = event.rv
                yield event

    def close(self) -> None:
        """End all watch streams and followers (at shutdown)."""
        self._closing = True
        self._signal()

    # ------------------------------------------------------------------ writing (admin path)

    def create(self, spec: ResourceSpec, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object as POST does; returns a copy of the stored object."""
        return copy.deepcopy(self._create(spec, copy.deepcopy(obj), namespace))

    def _create(self, spec: ResourceSpec, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        """:meth:`create` of an object the caller gives away; returns the stored object (never to be mutated)."""
        meta = obj.setdefault("metadata", {})
        if spec.namespaced:
            body_ns = meta.get("namespace")
            if namespace is not None and body_ns not in (None, namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = namespace or body_ns or "default"
            if self._store.get(self._key(NAMESPACES, None, namespace)) is None:
                raise ApiError.not_found(NAMESPACES, namespace)
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            # Real Kubernetes appends 5 random alphanumeric characters to generateName.
            meta["name"] = meta["generateName"] + "".join(secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
        key = self._key(spec, namespace, meta["name"])
        if key in self._store:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{spec.plural}{"." + spec.group if spec.group else ""} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": spec.group, "kind": spec.plural},
            )
        obj["apiVersion"] = spec.api_version
        obj["kind"] = spec.kind
        # Fields the API server owns: clients cannot choose them.
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339(self.clock)
        meta["generation"] = 1
        for owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(owned, None)
        if spec.has_status:
            # The registry strategies reset status on create (PrepareForCreate).
            obj.pop("status", None)
            if spec.key == PODS.key:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            elif spec.key == NAMESPACES.key:
                obj["status"] = {"phase": "Active"}
        self._creation_counter += 1
        self._creation_indexes[meta["uid"]] = self._creation_counter
        self._uids[meta["uid"]] = key
        return self._commit(spec, key, obj, None, "ADDED")

    def update(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        """
        Apply ``change`` (old object copy -> new object) with the rules of PUT/PATCH.

        ``status=True`` is the ``/status`` subresource: only ``.status`` is taken
        from the result. On the main endpoint of a resource with the status
        subresource, changes to ``.status`` are ignored (as real Kubernetes).
        """
        return copy.deepcopy(self._update(spec, namespace, name, change, status=status))

    def _update(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        """:meth:`update`, returning the stored object (never to be mutated)."""
        key = self._key(spec, namespace if spec.namespaced else None, name)
        old = self._store.get(key)
        if old is None:
            raise ApiError.not_found(spec, name)
        new = change(copy.deepcopy(old))
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the object must be a JSON object")
        new_meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        # Optimistic concurrency: a stated resourceVersion must be the current one.
        wanted_rv = new_meta.get("resourceVersion")
        if wanted_rv not in (None, "") and str(wanted_rv) != old_meta["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {spec.plural} "{name}": the object '
                f"has been modified; please apply your changes to the latest version "
                f"and try again",
                {"name": name, "kind": spec.plural},
            )
        # Stored objects are never mutated, so the new object shares what did not change with the old one.
        if status:
            result = {**old, "metadata": dict(old["metadata"])}
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if spec.has_status:
                if "status" in old:
                    result["status"] = old["status"]
                else:
                    result.pop("status", None)
            meta = result["metadata"]
            # Immutable or server-owned metadata keeps its stored value.
            for owned in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if owned in old_meta:
                    meta[owned] = old_meta[owned]
                else:
                    meta.pop(owned, None)
            if old_meta.get("deletionTimestamp"):
                # Once deleting, finalizers can only be removed, never added.
                meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f in old_meta.get("finalizers", [])]
        result["apiVersion"] = spec.api_version
        result["kind"] = spec.kind
        result["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if result.get("spec") != old.get("spec"):
            result["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if result == old:
            return old  # a no-op write: no new resourceVersion, no watch event
        committed = self._commit(spec, key, result, old, "MODIFIED")
        if _deletion_complete(committed["metadata"]):
            self._remove(spec, key)  # the last finalizer is gone: the deletion completes
        return committed

    def delete(  # type: ignore[override]  # see get()
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace_period: int | None = None,
    ) -> dict[str, Any]:
        """
        Delete as DELETE does: remove the object, or mark it (``deletionTimestamp``) while something must happen first.

        What real Kubernetes does, and this does too:

        * Finalizers: the object stays, marked, until its finalizers are removed.
        * ``propagationPolicy: Foreground``: the object gets the ``foregroundDeletion``
          finalizer; the garbage collector deletes its dependents and removes
          the finalizer once no dependent with ``blockOwnerDeletion`` is left,
          so the owner disappears only after them.
        * ``Background`` (and no policy: real Kubernetes orphans the pods of a
          batch/v1 Job deleted without a policy; every client here, kubectl
          included, names one): the object goes now and the garbage collector
          deletes its dependents afterwards. ``Orphan`` is not emulated.
        * Pods are deleted gracefully: a pod bound to a node and not yet in a
          terminal phase gets ``deletionTimestamp`` = now + its grace period
          (``gracePeriodSeconds`` of the request, else the pod's
          ``terminationGracePeriodSeconds``, default 30) and stays while the
          kubelet stops its containers; the kubelet then deletes it with a
          grace period of 0. An unbound or finished pod goes at once.
        """
        return copy.deepcopy(self._delete(spec, namespace, name, propagation=propagation, grace_period=grace_period))

    def _delete(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        grace_period: int | None = None,
    ) -> dict[str, Any]:
        """:meth:`delete`, returning the stored (or final) object (never to be mutated)."""
        key = self._key(spec, namespace if spec.namespaced else None, name)
        old = self._store.get(key)
        if old is None:
            raise ApiError.not_found(spec, name)
        meta = old["metadata"]
        grace = self._grace_period(old, grace_period) if spec.key == PODS.key else 0
        if meta.get("deletionTimestamp"):
            # Deleting already: a later request may only shorten the grace period.
            if grace >= (meta.get("deletionGracePeriodSeconds") or 0):
                return old
            marked = {**old, "metadata": {**meta, "deletionGracePeriodSeconds": grace}}
            if _deletion_complete(marked["metadata"]):
                return self._remove(spec, key)
            return self._commit(spec, key, marked, old, "MODIFIED")
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and FOREGROUND_FINALIZER not in finalizers:
            finalizers.append(FOREGROUND_FINALIZER)
        if finalizers or grace > 0:
            marked = {**old, "metadata": dict(meta)}
            marked["metadata"]["deletionTimestamp"] = now_rfc3339(
                lambda: self.clock() + datetime.timedelta(seconds=grace)
            )
            marked["metadata"]["deletionGracePeriodSeconds"] = grace
            if finalizers:
                marked["metadata"]["finalizers"] = finalizers
            return self._commit(spec, key, marked, old, "MODIFIED")
        return self._remove(spec, key)

    @staticmethod
    def _grace_period(pod: dict[str, Any], requested: int | None) -> int:
        """The pod registry's rule (CheckGracefulDelete): unbound or finished pods have none."""
        spec = pod.get("spec") or {}
        if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, int(requested))
        return max(0, int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD)))

    def locate(self, uid: str) -> tuple[ResourceSpec, dict[str, Any]] | None:
        """The resource and a copy of the object with this uid, or None (for the garbage collector)."""
        key = self._uids.get(uid)
        if key is None:
            return None
        return self.specs[key[0]], copy.deepcopy(self._store[key])

    def _remove(self, spec: ResourceSpec, key: ObjKey) -> dict[str, Any]:
        old = self._store[key]
        # The DELETED event carries the final state with a new resourceVersion.
        self._rv += 1
        final = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._rv)}}
        self._unindex(key, old)
        del self._store[key]
        self._uids.pop(old["metadata"]["uid"], None)
        self._record(WatchEvent(self._rv, spec, "DELETED", final, old))
        return final

    def _commit(
        self, spec: ResourceSpec, key: ObjKey, obj: dict[str, Any], old: dict[str, Any] | None, type_: str
    ) -> dict[str, Any]:
        # A single global counter, as etcd's revision: every write bumps it.
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        previous = self._store.get(key)
        if previous is not None:
            self._unindex(key, previous)
        self._store[key] = obj
        self._index(key, obj)
        self._record(WatchEvent(self._rv, spec, type_, obj, old))
        return obj

    def _index(self, key: ObjKey, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._by_resource.setdefault(key[0], {})[key] = obj
        for label, value in (meta.get("labels") or {}).items():
            self._by_label.setdefault((key[0], label, str(value)), set()).add(key)
        for ref in meta.get("ownerReferences") or []:
            self._by_owner.setdefault(str(ref.get("uid", "")), set()).add(key)

    def _unindex(self, key: ObjKey, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._by_resource.get(key[0], {}).pop(key, None)
        for label, value in (meta.get("labels") or {}).items():
            _discard(self._by_label, (key[0], label, str(value)), key)
        for ref in meta.get("ownerReferences") or []:
            _discard(self._by_owner, str(ref.get("uid", "")), key)

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        self._history_rvs.append(event.rv)
        if len(self._history) > HISTORY_LIMIT:
            del self._history[: len(self._history) - HISTORY_LIMIT]
            del self._history_rvs[: len(self._history_rvs) - HISTORY_LIMIT]
        self._signal()

    def _signal(self) -> None:
        # Wake every follower; the next waiters wait on a fresh event.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @staticmethod
    def _key(spec: ResourceSpec, namespace: str | None, name: str) -> ObjKey:
        return (spec.key, namespace if spec.namespaced else None, name)

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """
        Serve resource requests from the store; the rest (discovery) through KMock's scaffold.

        Resource requests never reach KMock's request parser: it fails with
        a 500 on ``/api/v1/namespaces`` and keeps every request in memory.
        """
        method = raw.method.upper()
        agent = raw.headers.get("User-Agent", "")
        query = dict(raw.query)
        raw_body = await raw.read()
        too_deep = _json_depth(raw_body) > MAX_JSON_DEPTH
        try:
            data: Any = json.loads(raw_body) if raw_body and not too_deep else None
        except ValueError:
            data = None
        body = data if method in ("POST", "PUT", "PATCH", "DELETE") else None
        status_code = self.faults.decide(method, raw.path) if BYPASS_FAULTS_HEADER not in raw.headers else None
        if status_code is not None:
            self._log(method, raw.path, query, status_code, body, faulted=True, user_agent=agent)
            reason = "TooManyRequests" if status_code == 429 else "InternalError"
            headers = {"Retry-After": "1"} if status_code == 429 else {}
            return self._error_response(
                ApiError(
                    status_code,
                    reason,
                    f"injected fault ({status_code})",
                    {"retryAfterSeconds": 1} if status_code == 429 else None,
                    headers,
                )
            )
        if too_deep:
            self._log(method, raw.path, query, 400, None, user_agent=agent)
            return self._error_response(ApiError(400, "BadRequest", "json: exceeded max depth"))
        if method == "GET" and (raw.path == "/openapi/v2" or raw.path.startswith("/openapi/v3")):
            response = self._serve_openapi(raw.path)
            self._log(method, raw.path, query, response.status, body, user_agent=agent)
            return response
        target = _parse_path(raw.path)
        spec = self.specs.get(target.resource_key) if target is not None else None
        if target is None or spec is None:
            response = await super().__call__(raw)
            self._log(method, raw.path, query, response.status, body, user_agent=agent)
            return response
        try:
            table = method == "GET" and wants_table(raw.headers.get("Accept", ""))
            if method == "GET" and query.get("watch") in ("true", "1"):
                return await self._serve_watch(raw, spec, target, query, table)
            response = self._serve(method, spec, target, query, raw.headers.get("Content-Type", ""), data)
            if table and target.subresource is None and response.status == 200:
                response = self._as_table(spec, target, query, response)
        except ApiError as e:
            response = self._error_response(e)
        except SelectorError as e:
            response = self._error_response(ApiError(400, "BadRequest", str(e)))
        self._log(method, raw.path, query, response.status, body, user_agent=agent)
        return response

    def _serve(
        self, method: str, spec: ResourceSpec, target: _Target, query: dict[str, str], content_type: str, data: Any
    ) -> aiohttp.web.StreamResponse:
        ns, name, sub = target.namespace, target.name, target.subresource
        if (
            sub not in (None, "status", "log")
            or (sub == "status" and not spec.has_status)
            or (sub == "log" and (spec.key != PODS.key or method != "GET"))
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                items = self._select(spec, ns, query.get("labelSelector"), query.get("fieldSelector"))
                # Real list responses name their kind and carry the collection's resourceVersion.
                return aiohttp.web.json_response(
                    {
                        "kind": f"{spec.kind}List",
                        "apiVersion": spec.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    }
                )
            if method == "POST":
                if not isinstance(data, dict):
                    raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
                return aiohttp.web.json_response(self._create(spec, copy.deepcopy(data), ns), status=201)
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {spec.plural}")
        if method == "GET" and sub == "log":
            self._stored(spec, ns, name)
            return aiohttp.web.Response(text=self.pod_logs.get((ns or "", name), ""))
        if method == "GET":
            return aiohttp.web.json_response(self._stored(spec, ns, name))
        if method == "DELETE":
            # DeleteOptions come in the body (the kubernetes client, kubectl) or the query.
            options = {**query, **(data if isinstance(data, dict) else {})}
            grace = options.get("gracePeriodSeconds")
            try:
                grace_period = None if grace in (None, "") else int(grace)
            except (TypeError, ValueError):
                raise ApiError(400, "BadRequest", f"gracePeriodSeconds: invalid value {grace!r}") from None
            return aiohttp.web.json_response(
                self._delete(spec, ns, name, propagation=options.get("propagationPolicy"), grace_period=grace_period)
            )
        if method == "PUT":
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
            replacement: dict[str, Any] = data
            return aiohttp.web.json_response(
                self._update(spec, ns, name, lambda _old: copy.deepcopy(replacement), status=sub == "status")
            )
        if method == "PATCH":
            apply = self._patcher(spec, content_type.split(";")[0].strip().lower(), data)
            return aiohttp.web.json_response(self._update(spec, ns, name, apply, status=sub == "status"))
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {spec.plural}")

    def _serve_openapi(self, path: str) -> aiohttp.web.StreamResponse:
        """Just enough OpenAPI for kubectl's validation (see openapi.py)."""
        if path == "/openapi/v2":
            return aiohttp.web.Response(body=OPENAPI_V2_PROTOBUF, content_type="application/octet-stream")
        if path.rstrip("/") == "/openapi/v3":
            return aiohttp.web.json_response(openapi_v3_index(self.specs.values()))
        doc = openapi_v3_group_version(self.specs.values(), path[len("/openapi/v3/") :])
        if doc is None:
            return self._error_response(ApiError(404, "NotFound", "the server could not find the requested resource"))
        return aiohttp.web.json_response(doc)

    def table(
        self,
        spec: ResourceSpec,
        objects: builtins.list[dict[str, Any]],
        include_object: str = "Metadata",
    ) -> dict[str, Any]:
        """A meta.k8s.io/v1 Table of objects, with the resource's printer columns (see tables.py)."""
        crd_spec = self.specs.get(("apiextensions.k8s.io", "v1", "customresourcedefinitions"))
        crds = self.list(crd_spec) if crd_spec is not None and not spec.builtin else []
        return to_table(
            spec, objects, resource_version=str(self._rv), now=self.clock(), crds=crds, include_object=include_object
        )

    def _as_table(
        self, spec: ResourceSpec, target: _Target, query: dict[str, str], response: aiohttp.web.StreamResponse
    ) -> aiohttp.web.StreamResponse:
        # kubectl get asks for `as=Table`: the real server prints rows server-side.
        assert isinstance(response, aiohttp.web.Response) and response.body is not None
        payload = json.loads(response.body.decode() if isinstance(response.body, bytes) else str(response.body))
        objects = payload["items"] if target.name is None else [payload]
        return aiohttp.web.json_response(self.table(spec, objects, query.get("includeObject", "Metadata")))

    @staticmethod
    def _patcher(spec: ResourceSpec, content_type: str, body: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def apply(old: dict[str, Any]) -> dict[str, Any]:
            try:
                if content_type == "application/json-patch+json":
                    return patches.json_patch(old, body)
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body of a merge patch must be a JSON object")
                if content_type == "application/merge-patch+json":
                    return patches.merge_patch(old, body)
                return patches.strategic_merge_patch(old, body)
            except patches.PatchError as e:
                raise ApiError(422, "Invalid", str(e)) from e

        if content_type == "application/strategic-merge-patch+json" and not spec.builtin:
            # Custom resources have no Go schema, so the real server refuses strategic merge.
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json-patch+json, "
                "application/merge-patch+json",
            )
        if content_type not in (
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type: {content_type!r}")
        return apply

    async def _serve_watch(
        self,
        raw: aiohttp.web.BaseRequest,
        spec: ResourceSpec,
        target: _Target,
        query: dict[str, str],
        table: bool = False,
    ) -> aiohttp.web.StreamResponse:
        labels = LabelSelector.parse(query.get("labelSelector"))
        fields = FieldSelector.parse(
            ",".join(
                filter(None, [query.get("fieldSelector"), f"metadata.name={target.name}" if target.name else None])
            )
        )
        namespace = target.namespace if spec.namespaced else None
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None

        def visible(obj: dict[str, Any] | None) -> bool:
            return (
                obj is not None
                and (namespace is None or obj["metadata"].get("namespace") == namespace)
                and labels.matches(obj)
                and fields.matches(obj)
            )

        rv_param = query.get("resourceVersion")
        initial: list[dict[str, Any]] = []
        if rv_param in (None, "", "0"):
            # "Get state and start at most recent": synthetic ADDED for what exists now.
            since = self._rv
            initial = [{"type": "ADDED", "object": obj} for obj in self._select(spec, namespace, labels, fields)]
        else:
            since = int(rv_param)

        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        self._log("GET", raw.path, query, 200, None, user_agent=raw.headers.get("User-Agent", ""))

        async def send(event: dict[str, Any]) -> None:
            if table and event.get("type") != "ERROR":
                # Watches asked `as=Table` stream each object as a one-row Table, as the real server.
                event = {
                    "type": event["type"],
                    "object": self.table(spec, [event["object"]], query.get("includeObject", "Metadata")),
                }
            await response.write(json.dumps(event).encode() + b"\n")

        async def pump() -> None:
            for event in initial:
                await send(event)
            async for change in self.follow(since):
                if change.spec.key != spec.key:
                    continue
                now_visible, was_visible = visible(change.object), visible(change.old)
                # A label change moving an object in or out of the selector is
                # seen by the watcher as ADDED / DELETED, as in real Kubernetes.
                if change.type == "DELETED" and was_visible:
                    await send({"type": "DELETED", "object": change.object})
                elif change.type != "DELETED" and now_visible:
                    await send({"type": "ADDED" if not was_visible else change.type, "object": change.object})
                elif change.type == "MODIFIED" and was_visible:
                    await send({"type": "DELETED", "object": change.object})

        async def client_gone() -> None:
            # aiohttp does not cancel a handler when its client disconnects, and a quiet
            # watch writes nothing that would fail: look at the connection instead, so a
            # watch a client has left ends, as it does on a real API server.
            while raw.transport is not None and not raw.transport.is_closing():
                await asyncio.sleep(0.2)

        pumping, watchdog = asyncio.create_task(pump()), asyncio.create_task(client_gone())
        try:
            await asyncio.wait({pumping, watchdog}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watchdog):
                task.cancel()
            await asyncio.gather(pumping, watchdog, return_exceptions=True)
        if pumping.done() and not pumping.cancelled() and isinstance(pumping.exception(), ApiError):
            with contextlib.suppress(ConnectionResetError):
                await send({"type": "ERROR", "object": pumping.exception().status_body()})  # type: ignore[union-attr]
        with contextlib.suppress(ConnectionResetError):  # the client went away meanwhile
            await response.write_eof()
        return response

    def _error_response(self, error: ApiError) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(error.status_body(), status=error.code, headers=error.headers)

    def _log(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        status: int,
        body: Any,
        faulted: bool = False,
        user_agent: str = "",
    ) -> None:
        self.request_log.append(RequestRecord(method, path, query, status, time.monotonic(), body, faulted, user_agent))


@dataclasses.dataclass(frozen=True)
class _Target:
    resource_key: tuple[str, str, str]
    namespace: str | None
    name: str | None
    subresource: str | None


def _parse_path(path: str) -> _Target | None:
    """
    Split a resource URL; None for discovery and other non-resource paths.

    Handles ``/api/v1/namespaces/NAME[/status]`` as the Namespace object,
    which KMock's parser reads as "namespace NAME, no resource".
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural, name = rest[0], rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return _Target((group, version, plural), namespace, name, subresource)


def _deletion_complete(meta: dict[str, Any]) -> bool:
    """A marked object goes once no finalizer is left and no grace period runs (real: the same rule on update)."""
    return (
        bool(meta.get("deletionTimestamp"))
        and not meta.get("finalizers")
        and not meta.get("deletionGracePeriodSeconds")
    )


def _discard(index: dict[Any, set[ObjKey]], entry: Any, key: ObjKey) -> None:
    """Take ``key`` out of an index entry, and the entry out of the index once empty (no unbounded growth)."""
    keys = index.get(entry)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[entry]
