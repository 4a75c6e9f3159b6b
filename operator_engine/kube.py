"""The Kubernetes calls the operator makes, with retries, through an asyncio client.

`kubernetes_asyncio` mirrors the official client's API (the same method
names, arguments and model classes) on aiohttp, which kopf already brings:
each call is a coroutine on the operator's event loop, so hundreds of
workflows wait on the API server together instead of taking turns on a few
worker threads. Transient answers (429, 5xx, connection errors, timeouts)
are retried with exponential backoff; "already exists" on create and "not
found" on delete count as success, which is what makes every handler safe
to run again after a crash. Any other 4xx is permanent and raised as
`PermanentError` with the API server's message, so the workflow can end
`Failed` saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import kopf
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from operator_engine import __version__, metrics
from operator_engine.leader import holder_identity

T = TypeVar("T")

GROUP, VERSION, PLURAL = "oceanprotocol.com", "v1alpha", "workflows"
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Connections to the API server one client may hold at once (aiohttp's connector limit; requests
#: beyond it wait for a free connection). Hundreds of workflows reconcile at once, each with a
#: request or two in flight; the API server's own default allows 400 read and 200 write requests
#: in flight (--max-requests-inflight, --max-mutating-requests-inflight).
POOL_SIZE = 400
#: aiohttp's read buffer, as kubernetes_asyncio sets it: a watch event of a large object (etcd takes up to
#: 1.5 MiB) must fit.
READ_BUFFER = 2**21
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class PermanentError(Exception):
    """The API server refused a request for a reason retrying cannot fix."""


class Conflict(PermanentError):
    """409: the object changed since the resourceVersion a write was conditioned on (read it again)."""


class TransientError(Exception):
    """Retries ran out on errors that may pass; the backstop timer will try again."""


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError, TypeError):
        return str(exc.reason)


async def load_configuration(kubeconfig: str | None = None) -> k8s.Configuration:
    """Where the API server is and how to authenticate, as `kubectl` would find it.

    With `kubeconfig` (a path), that file. Without: in-cluster credentials when
    running in a pod (the projected ServiceAccount token, re-read as the
    kubelet rotates it), else the kubeconfig named by KUBECONFIG (read now, not
    when a module was imported), else ~/.kube/config.
    """
    configuration = k8s.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return configuration
        except k8s_config.ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration, persist_config=False)
    return configuration


async def new_api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """An API client (see `load_configuration`) whose pool holds `POOL_SIZE` connections.

    Its User-Agent names the operator and this replica (the Lease holder
    identity), so the API server's audit log tells apart the replicas' writes.
    Create it on the event loop that uses it (aiohttp binds its session to
    that loop) and close it there (`await client.close()`).
    """
    configuration = await load_configuration(kubeconfig)
    configuration.connection_pool_maxsize = POOL_SIZE  # read when the client creates its pool, just below
    if configuration.proxy is None:
        configuration.proxy = environment_proxy(str(configuration.host))
    client = k8s.ApiClient(configuration)
    # kubernetes_asyncio opens its aiohttp session with trust_env=True: aiohttp then looks up the
    # proxy variables and reads ~/.netrc in a worker thread for every request (a seventh of the
    # operator's CPU at 100 workflows in flight, docs/BENCHMARKS.md). The proxy is resolved once,
    # above, and the session replaced by one on the same connection pool that does not look again.
    session = client.rest_client.pool_manager
    client.rest_client.pool_manager = aiohttp.ClientSession(
        connector=session.connector, trust_env=False, read_bufsize=READ_BUFFER
    )
    session.detach()  # the new session owns the pool now
    client.user_agent = f"operator-engine/{__version__} ({holder_identity()})"
    return client


def environment_proxy(url: str) -> str | None:
    """The proxy that HTTPS_PROXY / HTTP_PROXY name for `url`, unless NO_PROXY exempts its host; None if none."""
    host = urllib.parse.urlsplit(url).hostname
    proxies = urllib.request.getproxies_environment()
    if not host or urllib.request.proxy_bypass(host):
        return None
    return proxies.get(urllib.parse.urlsplit(url).scheme)


async def kopf_connection(kubeconfig: str) -> kopf.ConnectionInfo:
    """kopf's credentials from a kubeconfig file, read the way the operator's own client reads it."""
    configuration = await load_configuration(kubeconfig)
    header = await configuration.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)  # RFC 7235: "Bearer xyz"
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


class Kube:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        attempts: int = 8,
        base_delay: float = 0.1,
        max_delay: float = 2.0,
        request_timeout: float = 15.0,
    ) -> None:
        self.client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.batch = k8s.BatchV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
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
        # The loop the client's connections belong to (aiohttp binds them to it): close() runs there.
        self._loop = asyncio.get_running_loop()

    async def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, ok: tuple[int, ...] = (), **kwargs: Any
    ) -> T | None:
        """Await fn with retries; a status in `ok` returns None instead of raising."""
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn(*args, _request_timeout=self.timeout, **kwargs)
            except ApiException as exc:
                if exc.status in ok:
                    return None
                metrics.api_error(exc.status)
                if exc.status == 409:
                    raise Conflict(f"{exc.status} {_message(exc)}") from None
                if exc.status not in TRANSIENT_STATUSES and exc.status != 0:
                    raise PermanentError(f"{exc.status} {_message(exc)}") from None
                last = f"{exc.status} {_message(exc)}"
                headers: Mapping[str, str] = exc.headers or {}
                retry_after = headers.get("Retry-After") if exc.status == 429 else None
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # No answer: refused or reset connections, a server that went away, the request timeout.
                metrics.api_error(None)
                last, wait = f"{type(exc).__name__}: {exc}", delay
            if attempt == self.attempts:
                raise TransientError(last)
            await asyncio.sleep(min(wait, self.max_delay) * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")

    async def call_json(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        ok: tuple[int, ...] = (),
        parse: bool = True,
        **kwargs: Any,
    ) -> Any:
        """`call`, answered with the parsed JSON (dicts and lists) instead of the client's model objects.

        Building model objects (a class per nested field, every timestamp parsed
        by dateutil) took a fifth of the operator's CPU at 100 workflows in
        flight (docs/BENCHMARKS.md); what the operator reads of Jobs and pods,
        and the answers to creates and deletes it does not read, need none of it.
        Without `parse`, a success answers {} (the body is read, not decoded).
        """

        async def raw(*a: Any, **kw: Any) -> Any:
            response = await fn(*a, _preload_content=False, **kw)
            data = await response.read()
            if not 200 <= response.status <= 299:  # what the client raises when it reads the answer itself
                error = ApiException(status=response.status, reason=response.reason)
                error.body, error.headers = data.decode("utf-8", "replace"), response.headers
                raise error
            return json.loads(data) if data and parse else {}

        return await self.call(raw, *args, ok=ok, **kwargs)

    async def aclose(self) -> None:
        """Close the pooled connections (a keep-alive connection would hold a local API server's shutdown)."""
        await self.client.close()

    def close(self) -> Any:
        """`await kube.close()` on the client's event loop; from another thread, blocks until closed.

        Both forms work so that a caller that closed the synchronous client of
        earlier versions in a worker thread (`await asyncio.to_thread(kube.close)`)
        still closes this one, on the loop its connections belong to.
        """
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread
            running = None
        if running is self._loop:
            return asyncio.ensure_future(self.aclose())
        if self._loop.is_closed():
            return None
        asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(timeout=30)
        return None

    # --- Workflows

    async def get_workflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.call(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, ok=(404,)
        )

    async def list_workflows(self, namespace: str) -> list[dict[str, Any]]:
        result = await self.call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        return list((result or {}).get("items", []))

    async def patch_workflow_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """Merge `status` into the Workflow's status: the Workflow as patched (truthy), None if it is gone.

        With `resource_version`, only if the Workflow is still that version
        (the API server's optimistic concurrency): else `Conflict`.
        """
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        result = await self.call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            patch,
            _content_type=MERGE_PATCH,
            ok=(404,),
        )
        return dict(result) if result is not None else None

    async def add_finalizer(self, body: dict[str, Any], finalizer: str) -> dict[str, Any] | None:
        """Add `finalizer`: the Workflow as patched, None if nothing was written."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        current = list(body["metadata"].get("finalizers") or [])
        if finalizer in current:
            return None
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
        return await self._patch_finalizers(namespace, name, ops)

    async def _patch_finalizers(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        """A JSON patch of the finalizers: the Workflow as patched; None for 404 (gone) and 422 (its `test`
        failed: someone changed them), which are no-ops."""
        return await self.call(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            ops,
            _content_type=JSON_PATCH,
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
        await self._patch_finalizers(namespace, name, ops)

    # --- children

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create a child; False when it already exists (a re-run after a crash)."""
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        result = await self.call_json(self.child_apis[kind][0], namespace, manifest, ok=(409,), parse=False)
        return result is not None

    async def delete(self, kind: str, namespace: str, name: str, *, foreground: bool = False) -> bool:
        # Background propagation: the Job's pods go too (the default for Jobs would orphan them).
        # Foreground: the Job stays (deletionTimestamp set) until its pods are gone, and its
        # deletion event then says so; a stopped stage is deleted this way.
        policy = "Foreground" if foreground else "Background"
        body = k8s.V1DeleteOptions(propagation_policy=policy)
        result = await self.call_json(self.child_apis[kind][1], name, namespace, body=body, ok=(404,), parse=False)
        return result is not None

    async def list_children(self, kind: str, namespace: str, workflow: str) -> list[dict[str, Any]]:
        """The workflow's children of one kind (as JSON objects), found by the labels every child carries."""
        lister = self.child_apis[kind][2]
        if lister is None:
            raise ValueError(f"{kind} children are never listed; delete them by name")
        result = await self.call_json(
            lister, namespace, label_selector=f"app={workflow},app.kubernetes.io/managed-by=operator-engine"
        )
        return list((result or {}).get("items") or [])

    async def list_workflow_pods(self, namespace: str, workflow: str) -> list[dict[str, Any]]:
        """The pods (as JSON objects) of all the workflow's Jobs (their templates carry the children's labels)."""
        result = await self.call_json(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"app={workflow},app.kubernetes.io/managed-by=operator-engine",
        )
        return list((result or {}).get("items") or [])

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
        # It exists but for the operator's first start: a patch, and a create only when it is missing.
        for _ in range(2):
            if await self.call(
                self.core.patch_namespaced_config_map,
                name,
                namespace,
                {"data": data},
                _content_type=MERGE_PATCH,
                ok=(404,),
            ):
                return
            if await self.call(self.core.create_namespaced_config_map, namespace, body, ok=(409,)):
                return  # else made meanwhile by another replica: patched on the second round
