"""
The tests' view of the real cluster: the admin's ``kubernetes`` client, a recorder of every change
(a list+watch that survives API server restarts), the API server's audit log, and waits with deadlines.

Pure helpers of the operator tests (notification checks, sample Workflows) are reused from
``tests/operator/helpers.py`` and ``tests/demo/helpers.py``; the notification receiver from
``tests/operator/conftest.py`` (see :func:`operator_test_support`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from operator_engine.devcluster.node import Informer

NS = "ocean-compute"
GROUP, VERSION, PLURAL = "oceanprotocol.com", "v1alpha", "workflows"
OPERATOR_USER = "system:serviceaccount:ocean-compute:ocean-compute-operator"
TESTS = Path(__file__).resolve().parents[1]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Stopped", "TimedOut"})
CHILD_KINDS = ("jobs", "configmaps", "persistentvolumeclaims", "secrets")


def operator_test_support() -> tuple[ModuleType, ModuleType]:
    """``tests/operator``'s helpers and conftest modules (its Receiver, check_payload, ...), loaded once."""
    folder = str(TESTS / "operator")
    if folder not in sys.path:
        sys.path.append(folder)  # its conftest imports `helpers` from its folder
    import helpers  # noqa: PLC0415  (tests/operator/helpers.py)

    name = "operator_tests_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / "operator" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return helpers, sys.modules[name]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    context: Callable[[], str] | None = None,
    interval: float = 0.2,
) -> Any:
    """Poll ``predicate`` until truthy; fail naming ``what`` (and ``context()``) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def is_terminal(obj: dict[str, Any] | None) -> bool:
    st = status(obj)
    return bool(st.get("dateFinished")) and st.get("phase") in TERMINAL_PHASES


@dataclasses.dataclass(frozen=True)
class Change:
    time: float
    type: str  # ADDED | MODIFIED | DELETED
    plural: str
    name: str
    uid: str
    object: dict[str, Any]


class History:
    """Every change of the Workflows and their children in the namespace, from list+watch (relists on 410)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        self.changes: list[Change] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

        def workflows(**kwargs: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, **kwargs)

        sources: dict[str, Callable[..., Any]] = {
            "workflows": workflows,
            "jobs": lambda **kw: batch.list_namespaced_job(NS, **kw),
            "pods": lambda **kw: core.list_namespaced_pod(NS, **kw),
            "configmaps": lambda **kw: core.list_namespaced_config_map(NS, **kw),
            "secrets": lambda **kw: core.list_namespaced_secret(NS, **kw),
            "persistentvolumeclaims": lambda **kw: core.list_namespaced_persistent_volume_claim(NS, **kw),
        }
        self.informers = [
            Informer(plural, call, self._recorder(plural), self._stopping) for plural, call in sources.items()
        ]

    def _recorder(self, plural: str) -> Callable[[str, dict[str, Any]], None]:
        def record(kind: str, obj: dict[str, Any]) -> None:
            meta = obj.get("metadata") or {}
            with self._lock:
                self.changes.append(
                    Change(time.monotonic(), kind, plural, meta.get("name", ""), meta.get("uid", ""), obj)
                )

        return record

    def start(self) -> None:
        for informer in self.informers:
            informer.thread.start()
        wait_until(lambda: all(i.relists for i in self.informers), 60, "the history to list every kind")

    def stop(self) -> None:
        self._stopping.set()
        for informer in self.informers:
            if informer.watch is not None:
                informer.watch.stop()

    def of(self, plural: str, name: str | None = None) -> list[Change]:
        with self._lock:
            return [c for c in self.changes if c.plural == plural and (name is None or c.name == name)]

    def codes(self, name: str) -> list[int]:
        """The successive statusCode values of the Workflow (changes only)."""
        out: list[int] = []
        for change in self.of("workflows", name):
            code = status(change.object).get("statusCode")
            if change.type != "DELETED" and code is not None and (not out or out[-1] != code):
                out.append(code)
        return out

    def uids(self, plural: str, prefix: str) -> dict[str, set[str]]:
        """name -> every uid an object of that name had: more than one means it was created again."""
        found: dict[str, set[str]] = {}
        for change in self.of(plural):
            if change.name == prefix or change.name.startswith(prefix + "-"):
                found.setdefault(change.name, set()).add(change.uid)
        return found

    def first_added(self, plural: str, name: str) -> float | None:
        return next((c.time for c in self.of(plural, name)), None)

    def max_admitted(self, names: Iterable[str]) -> int:
        """The largest number of these Workflows admitted (code >= 10) and not yet terminal at once."""
        wanted = set(names)
        current: dict[str, bool] = {}
        best = 0
        with self._lock:
            changes = [c for c in self.changes if c.plural == "workflows" and c.name in wanted]
        for change in changes:
            admitted = (
                change.type != "DELETED"
                and not is_terminal(change.object)
                and (status(change.object).get("statusCode") or 0) >= 10
            )
            current[change.name] = admitted
            best = max(best, sum(current.values()))
        return best


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    user: str
    verb: str
    group: str
    resource: str  # with "/subresource" when there is one
    namespace: str
    name: str
    code: int
    uri: str


class AuditLog:
    """The API server's audit log (JSON lines, one event per request at ResponseComplete)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def raw(
        self, user: str | None = OPERATOR_USER, since: int = 0, stages: tuple[str, ...] = ("ResponseComplete",)
    ) -> list[dict[str, Any]]:
        """The audit events as the API server wrote them, of ``user`` (None: everyone's), from line ``since`` on."""
        found: list[dict[str, Any]] = []
        if not self.path.exists():
            return found
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines):
                if number < since or not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if event.get("stage") not in stages:
                    continue
                if user is not None and (event.get("user") or {}).get("username", "") != user:
                    continue
                found.append(event)
        return found

    def events(
        self, user: str | None = OPERATOR_USER, since: int = 0, stages: tuple[str, ...] = ("ResponseComplete",)
    ) -> list[AuditEvent]:
        """The requests of ``user`` (None: everyone's) from line ``since`` on, at the given audit stages."""
        found: list[AuditEvent] = []
        for event in self.raw(user, since, stages):
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            found.append(
                AuditEvent(
                    (event.get("user") or {}).get("username", ""),
                    event.get("verb", ""),
                    ref.get("apiGroup", ""),
                    resource,
                    ref.get("namespace", ""),
                    ref.get("name", ""),
                    int((event.get("responseStatus") or {}).get("code") or 0),
                    event.get("requestURI", ""),
                )
            )
        return found

    def lines(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            return sum(1 for _ in f)


class Cluster:
    """The admin's client of the real cluster, for the tests (never the operator's)."""

    def __init__(self, control_plane: Any, history: History | None = None) -> None:
        self.control_plane = control_plane
        self.api_client = config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.history = history

    # ------------------------------------------------------------ workflows

    def create_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(body))
        body["metadata"]["namespace"] = NS
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
        return created

    def workflow(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
            return found
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch_spec(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, {"spec": patch})

    def delete_workflow(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise

    def wait_workflow(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], Any],
        timeout: float,
        what: str,
        context: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.workflow(name)
            return obj if obj is not None and predicate(obj) else None

        def explain() -> str:
            obj = self.workflow(name)
            st = {k: v for k, v in status(obj).items() if k != "kopf"}
            extra = context() if context is not None else ""
            return f"workflow {name}: {json.dumps(st, default=str)[:2000]}\n{self.describe(name)}\n{extra}"

        found: dict[str, Any] = wait_until(check, timeout, f"workflow {name} to reach {what}", explain)
        return found

    def wait_terminal(
        self, name: str, timeout: float = 180.0, context: Callable[[], str] | None = None
    ) -> dict[str, Any]:
        return status(self.wait_workflow(name, is_terminal, timeout, "a terminal status", context))

    def wait_code(
        self, name: str, code: int, timeout: float = 180.0, context: Callable[[], str] | None = None
    ) -> dict[str, Any]:
        return self.wait_workflow(
            name,
            lambda o: (status(o).get("statusCode") or 0) >= code or is_terminal(o),
            timeout,
            f"status code {code}",
            context,
        )

    def wait_gone(self, name: str, timeout: float = 120.0) -> None:
        wait_until(
            lambda: self.workflow(name) is None,
            timeout,
            f"workflow {name} to be gone",
            lambda: json.dumps((self.workflow(name) or {}).get("metadata"), default=str),
        )

    # ------------------------------------------------------------ children

    def children(self, name: str) -> dict[str, list[str]]:
        """The Workflow's children that exist now (by the label app=<name>), by plural."""
        selector = f"app={name}"
        listed = {
            "jobs": self.batch.list_namespaced_job(NS, label_selector=selector).items,
            "configmaps": self.core.list_namespaced_config_map(NS, label_selector=selector).items,
            "persistentvolumeclaims": self.core.list_namespaced_persistent_volume_claim(
                NS, label_selector=selector
            ).items,
            "secrets": self.core.list_namespaced_secret(NS, label_selector=selector).items,
            "pods": self.core.list_namespaced_pod(NS, label_selector=selector).items,
        }
        return {plural: sorted(i.metadata.name for i in items) for plural, items in listed.items() if items}

    def wait_clean(self, name: str, timeout: float = 120.0) -> None:
        """No child of the Workflow left: the operator's deletions and the garbage collector are done."""
        wait_until(
            lambda: not self.children(name),
            timeout,
            f"the children of {name} to be gone",
            lambda: json.dumps(self.children(name)),
        )

    def running_pods(self, name: str) -> list[str]:
        pods = self.core.list_namespaced_pod(NS, label_selector=f"app={name}").items
        return [p.metadata.name for p in pods if p.status.phase in ("Pending", "Running")]

    def describe(self, name: str) -> str:
        """Jobs and pods of the Workflow, for failure messages."""
        lines = []
        for job in self.batch.list_namespaced_job(NS, label_selector=f"app={name}").items:
            conditions = [(c.type, c.reason) for c in job.status.conditions or []]
            lines.append(
                f"job {job.metadata.name}: active={job.status.active} failed={job.status.failed} "
                f"succeeded={job.status.succeeded} conditions={conditions}"
            )
        for pod in self.core.list_namespaced_pod(NS, label_selector=f"app={name}").items:
            states = [(s.name, s.state.to_dict()) for s in pod.status.container_statuses or []]
            lines.append(
                f"pod {pod.metadata.name}: node={pod.spec.node_name} phase={pod.status.phase} "
                f"{json.dumps(states, default=str)[:600]}"
            )
        return "\n".join(lines)

    def kubectl(self, *args: str) -> Any:
        return self.control_plane.kubectl(*args)
