"""The Kubernetes calls the operator makes, with retries, through the official client.

Each call runs the synchronous `kubernetes` client in a worker thread so the
kopf event loop never blocks. Transient answers (429, 5xx, connection
errors, timeouts) are retried with exponential backoff; "already exists" on
create and "not found" on delete count as success, which is what makes every
handler safe to run again after a crash. Any other 4xx is permanent and
raised as `PermanentError` with the API server's message, so the workflow
can end `Failed` saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client import ApiException

from operator_engine import __version__, metrics
from operator_engine.leader import holder_identity

T = TypeVar("T")

GROUP, VERSION, PLURAL = "oceanprotocol.com", "v1alpha", "workflows"
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class PermanentError(Exception):
    """The API server refused a request for a reason retrying cannot fix."""


class TransientError(Exception):
    """Retries ran out on errors that may pass; the backstop timer will try again."""


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def new_api_client() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).

    Its User-Agent names the operator and this replica (the Lease holder
    identity), so the API server's audit log tells apart the replicas' writes.
    """
    try:
        kubernetes.config.load_incluster_config()
        client = kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        # The client reads KUBECONFIG once, when first imported; read it now.
        client = kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    client.user_agent = f"operator-engine/{__version__} ({holder_identity()})"
    return client


class Kube:
    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        attempts: int = 8,
        base_delay: float = 0.1,
        max_delay: float = 2.0,
        request_timeout: float = 15.0,
    ) -> None:
        self.client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        # (create, delete, list) for each kind of child the operator makes. Only Jobs
        # are listed (to follow the stages); the others are deleted by their known
        # names, so the Role grants no `list` on them: `list` on Secrets would read
        # every Secret in the namespace (docs/SECURITY.md).
        core, batch = self.core, self.batch
        self.child_apis: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any] | None]] = {
            "ConfigMap": (core.create_namespaced_config_map, core.delete_namespaced_config_map, None),
            "Secret": (core.create_namespaced_secret, core.delete_namespaced_secret, None),
            "PersistentVolumeClaim": (
                core.create_namespaced_persistent_volume_claim,
                core.delete_namespaced_persistent_volume_claim,
                None,
            ),
            "Job": (batch.create_namespaced_job, batch.delete_namespaced_job, batch.list_namespaced_job),
        }
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = request_timeout

    async def call(self, fn: Callable[..., T], *args: Any, ok: tuple[int, ...] = (), **kwargs: Any) -> T | None:
        """Run fn with retries; a status in `ok` returns None instead of raising."""
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return await asyncio.to_thread(fn, *args, _request_timeout=self.timeout, **kwargs)
            except ApiException as exc:
                if exc.status in ok:
                    return None
                metrics.api_error(exc.status)
                if exc.status not in TRANSIENT_STATUSES and exc.status != 0:
                    raise PermanentError(f"{exc.status} {_message(exc)}") from None
                last = f"{exc.status} {_message(exc)}"
                retry_after = (exc.headers or {}).get("Retry-After") if exc.status == 429 else None
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                metrics.api_error(None)
                last, wait = f"{type(exc).__name__}: {exc}", delay
            if attempt == self.attempts:
                raise TransientError(last)
            await asyncio.sleep(min(wait, self.max_delay) * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close pooled connections (a keep-alive connection would hold a local API server's shutdown)."""
        self.client.close()

    # --- Workflows

    async def get_workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.call(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, ok=(404,)
        )

    async def list_workflows(self, namespace: str) -> list[dict[str, Any]]:
        result = await self.call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        return list((result or {}).get("items", []))

    async def patch_workflow_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge `status` into the Workflow's status: the Workflow as patched (truthy), None if it is gone."""
        result = await self.call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            ok=(404,),
        )
        return dict(result) if result is not None else None

    async def add_finalizer(self, body: dict[str, Any], finalizer: str) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        current = list(body["metadata"].get("finalizers") or [])
        if finalizer in current:
            return
        # JSON patch guarded by a test of the list as read: another controller's
        # finalizer added meanwhile is never overwritten (422, retried on the next event).
        ops: list[dict[str, Any]] = (
            [
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
            ]
            if current
            else [{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]
        )
        await self.call(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            ops,
            _content_type="application/json-patch+json",
            ok=(404, 422),
        )

    async def remove_finalizer(self, body: dict[str, Any], finalizer: str) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        current = list(body["metadata"].get("finalizers") or [])
        if finalizer not in current:
            return
        index = current.index(finalizer)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        await self.call(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            ops,
            _content_type="application/json-patch+json",
            ok=(404, 422),
        )

    # --- children

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create a child; False when it already exists (a re-run after a crash)."""
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        result = await self.call(self.child_apis[kind][0], namespace, manifest, ok=(409,))
        return result is not None

    async def delete(self, kind: str, namespace: str, name: str, *, foreground: bool = False) -> bool:
        # Background propagation: the Job's pods go too (the default for Jobs would orphan them).
        # Foreground: the Job stays (deletionTimestamp set) until its pods are gone, and its
        # deletion event then says so; a stopped stage is deleted this way.
        policy = "Foreground" if foreground else "Background"
        body = kubernetes.client.V1DeleteOptions(propagation_policy=policy)
        result = await self.call(self.child_apis[kind][1], name, namespace, body=body, ok=(404,))
        return result is not None

    async def list_children(self, kind: str, namespace: str, workflow: str) -> list[Any]:
        """The workflow's children of one kind, found by the labels every child carries."""
        lister = self.child_apis[kind][2]
        if lister is None:
            raise ValueError(f"{kind} children are never listed; delete them by name")
        result = await self.call(
            lister, namespace, label_selector=f"app={workflow},app.kubernetes.io/managed-by=operator-engine"
        )
        return list(result.items) if result else []

    async def list_pods(self, namespace: str, job_name: str) -> list[Any]:
        result = await self.call(self.core.list_namespaced_pod, namespace, label_selector=f"job-name={job_name}")
        return list(result.items) if result else []

    async def list_workflow_pods(self, namespace: str, workflow: str) -> list[Any]:
        """The pods of all the workflow's Jobs (their templates carry the children's labels)."""
        result = await self.call(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"app={workflow},app.kubernetes.io/managed-by=operator-engine",
        )
        return list(result.items) if result else []

    async def apply_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Create or replace a ConfigMap the operator owns (the environment ConfigMap)."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "operator-engine"},
            },
            "data": data,
        }
        created = await self.call(self.core.create_namespaced_config_map, namespace, body, ok=(409,))
        if created is None:
            await self.call(self.core.patch_namespaced_config_map, name, namespace, {"data": data})
