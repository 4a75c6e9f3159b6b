"""
:class:`ProcessNode`: a small kubelet for a REAL API server, running pods as local processes.

    FOR TRYING AND DEVELOPING ONLY, as :mod:`operator_engine.devcluster.process`
    (whose :class:`ProcessRuntime` runs the pods here too): no container, no
    isolation, the image is ignored and the command runs as your user.

What it does of a kubelet's work, and nothing else (it serves no port, so
``kubectl logs`` and ``exec`` do not reach it; the pod's output is in
``<root>/pods/<namespace>/<pod>/output.log``):

* registers a ``Node`` with the capacity it was given (cpu, memory,
  ``nvidia.com/gpu``, ephemeral-storage, pods), Ready, and renews its ``Lease``
  in ``kube-node-lease`` every :data:`LEASE_RENEW` seconds (the node lifecycle
  controller marks a node whose lease is older than 40 s NotReady);
* watches the pods bound to it (``fieldSelector=spec.nodeName=<name>``) and
  runs each as a process (:class:`ProcessRuntime`: env from Secrets and
  ConfigMaps, ConfigMap/Secret/PVC volumes as folders, the termination message
  from ``terminationMessagePath`` or, with ``FallbackToLogsOnError``, the log
  tail); writes the pod status as the kubelet does (phase, conditions,
  ``containerStatuses[].state``; :func:`kubelet_pod_status`, shared with the
  embedded cluster); enforces the pod's ``activeDeadlineSeconds``;
* gives each pod what a kubelet gives it to reach the API server:
  ``KUBERNETES_SERVICE_HOST``/``_PORT`` (the API server on loopback) and the
  ServiceAccount volume that admission adds (``kube-api-access-*``: a token
  from the TokenRequest API bound to the pod, ``ca.crt`` from
  ``kube-root-ca.crt``, the namespace). A local process cannot have
  ``/var/run/secrets/kubernetes.io/serviceaccount``, where in-cluster clients
  look, so the node also sets ``KUBECONFIG`` to a file built from that token
  and CA: in-cluster loading fails, and the kubernetes client and kopf fall
  back to it (a deliberate difference, docs/TESTING.md). The token is not
  renewed (it lives the volume's ``expirationSeconds``, 3607 s by default);
* runs the ``readinessProbe`` (``httpGet`` on 127.0.0.1) and reports the
  pod's Ready condition from it; liveness and startup probes are not run,
  and a container that ends is not restarted (the ReplicaSet replaces the pod);
* treats container ports as host ports (the processes share the node's
  network): a pod whose ports another running pod holds waits, Pending,
  until they are free (two operator replicas on this one node: one runs,
  the other waits, as a standby would);
* ends a deleted pod (``deletionTimestamp`` set) with SIGTERM, SIGKILL after its
  grace period, then removes the object (the kubelet's final delete with
  grace period 0);
* provisions volumes as rancher's local-path provisioner does: a
  ``StorageClass`` (``volumeBindingMode: Immediate``) whose claims each get a
  ``local`` PersistentVolume on a folder ``<root>/volumes/pvc-<uid>``,
  pre-bound to the claim (the real PV controller completes the binding), and
  removed with its folder once the claim is deleted (the PV is Released).

Every watch lists, then watches from the list's resourceVersion, and lists
again on ``410 Gone`` (an expired resourceVersion) or a broken connection,
comparing the new list with what it knew: a watch that reconnects misses
nothing. The watches use the official ``kubernetes`` client, in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import platform
import shutil
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from operator_engine.devcluster.process import PodSetupError, ProcessRuntime
from operator_engine.devcluster.runtime import Result, kubelet_pod_status, terminated_state

__all__ = ["Informer", "ProcessNode", "NodeRuntime", "PROVISIONER"]

logger = logging.getLogger(__name__)

#: The provisioner name of the node's StorageClass (what ``pv.kubernetes.io/provisioned-by`` says).
PROVISIONER = "operator-engine.oceanprotocol.com/process-node"
#: Seconds between Lease renewals (the kubelet's default: a quarter of the 40 s lease).
LEASE_RENEW = 10.0
LEASE_SECONDS = 40
#: Seconds between Node status heartbeats (the Lease carries liveness in between).
STATUS_EVERY = 60.0
#: Server-side timeout of each watch request; the watch then resumes from its last resourceVersion.
WATCH_SECONDS = 60
TERMINAL = ("Succeeded", "Failed")
#: Seconds between attempts to report a pod's status the API server did not take.
STATUS_RETRY = 1.0
#: When the node stops, a pod's process gets at most this long between SIGTERM and SIGKILL.
STOP_GRACE = 5.0
#: Where a container finds its ServiceAccount's token, CA and namespace (the ServiceAccount admission's mount).
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Lifetime of a projected token when the volume names none (the admission plugin's default: 3607 s).
TOKEN_SECONDS = 3607
#: Seconds between checks whether a waiting pod's container ports are free.
PORT_WAIT = 1.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ignore(*codes: int) -> Callable[[ApiException], bool]:
    return lambda e: e.status in codes


_IGNORE_NOTHING = _ignore()


class NodeRuntime(ProcessRuntime):
    """
    The process runtime reading a real API server: Secrets, ConfigMaps and
    claims through the ``kubernetes`` client; a claim's folder is the path of
    the PersistentVolume it is bound to (provisioned by :class:`ProcessNode`).
    """

    def __init__(self, root: Path, core: client.CoreV1Api, *, max_grace: float) -> None:
        super().__init__(root, max_grace=max_grace)
        self.core = core
        self.grace_overrides: dict[str, float] = {}  # pod uid -> deletionGracePeriodSeconds

    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        # Called from the node's event loop while a pod starts: short loopback
        # requests, so a blocking call is acceptable here.
        read = {
            "configmap": self.core.read_namespaced_config_map,
            "secret": self.core.read_namespaced_secret,
            "persistentvolumeclaim": self.core.read_namespaced_persistent_volume_claim,
        }[kind]
        try:
            response = read(name, namespace, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(response.data)
        return found

    def publish_log(self, namespace: str, pod_name: str, text: str) -> None:
        """Nothing to publish: this node serves no log endpoint (the output is in the pod folder)."""

    def claim_dir(self, namespace: str, claim: str) -> Path:
        pvc = self.get_object("persistentvolumeclaim", namespace, claim)
        if pvc is None:
            raise PodSetupError("CreateContainerConfigError", f'persistentvolumeclaim "{claim}" not found')
        volume = (pvc.get("spec") or {}).get("volumeName")
        if not volume or (pvc.get("status") or {}).get("phase") != "Bound":
            raise PodSetupError("CreateContainerConfigError", f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.core.read_persistent_volume(volume)
        source = pv.spec.local or pv.spec.host_path
        if source is None:
            raise PodSetupError(
                "CreateContainerConfigError",
                f'volume "{volume}" is neither local nor hostPath: this node cannot mount it',
            )
        folder = Path(source.path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def service_account_token(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        """
        A token of the pod's ServiceAccount from the TokenRequest API, bound to the pod (it stops
        working once the pod is deleted), as the kubelet writes into ``kube-api-access-*``.
        """
        meta, spec = pod["metadata"], pod.get("spec") or {}
        account = spec.get("serviceAccountName") or "default"
        audience = source.get("audience")
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": int(source.get("expirationSeconds") or TOKEN_SECONDS),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            response = self.core.create_namespaced_service_account_token(account, meta["namespace"], body)
        except ApiException as e:
            raise PodSetupError(
                "CreateContainerConfigError",
                f'cannot get a token for serviceaccount "{account}": {e.status} {e.reason}',
            ) from e
        return str(response.status.token)

    def node_env(self, pod: dict[str, Any], mounts: Mapping[str, Path]) -> dict[str, str]:
        """
        What a kubelet gives every container: ``KUBERNETES_SERVICE_HOST``/``_PORT`` (here the API
        server itself, on loopback). With the service-account volume mounted, also ``KUBECONFIG``:
        a file built from its token and CA, because a local process cannot have the fixed path
        ``/var/run/secrets/kubernetes.io/serviceaccount`` that in-cluster clients read; they find it
        missing and fall back to ``KUBECONFIG`` (the kubernetes client and kopf both do).
        """
        server = urllib.parse.urlsplit(self.core.api_client.configuration.host)
        host, port = server.hostname or "127.0.0.1", str(server.port or 443)
        env = {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }
        folder = mounts.get(SERVICE_ACCOUNT_PATH)
        if folder is not None and (folder / "token").is_file():
            meta = pod["metadata"]
            kubeconfig = self.pod_dir(meta["namespace"], meta["name"]) / "kubeconfig"
            cluster: dict[str, Any] = {"server": self.core.api_client.configuration.host}
            if (folder / "ca.crt").is_file():
                cluster["certificate-authority"] = str(folder / "ca.crt")
            kubeconfig.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "current-context": "in-cluster",
                        "clusters": [{"name": "in-cluster", "cluster": cluster}],
                        "users": [{"name": "service-account", "user": {"token": (folder / "token").read_text()}}],
                        "contexts": [
                            {
                                "name": "in-cluster",
                                "context": {
                                    "cluster": "in-cluster",
                                    "user": "service-account",
                                    "namespace": meta["namespace"],
                                },
                            }
                        ],
                    }
                ),
                encoding="utf-8",
            )
            kubeconfig.chmod(0o600)
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def grace_period(self, pod: dict[str, Any]) -> float:
        uid = pod["metadata"].get("uid", "")
        if uid in self.grace_overrides:
            return min(self.grace_overrides[uid], self.max_grace)
        return super().grace_period(pod)


class Informer:
    """List, then watch from the list's resourceVersion; list again on 410 Gone or a lost connection."""

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        deliver: Callable[[str, dict[str, Any]], None],
        stopping: threading.Event,
        **selectors: Any,
    ) -> None:
        self.name = name
        self.list_call = list_call
        self.deliver = deliver
        self.stopping = stopping
        self.selectors = selectors
        self.known: dict[str, dict[str, Any]] = {}  # uid -> latest object
        self.relists = 0
        self.watch: watch.Watch | None = None
        self.thread = threading.Thread(target=self._main, name=f"node-watch-{name}", daemon=True)

    def _list(self) -> str:
        response = self.list_call(_preload_content=False, **self.selectors)
        listing = json.loads(response.data)
        current = {item["metadata"]["uid"]: item for item in listing.get("items") or []}
        for uid, old in list(self.known.items()):
            if uid not in current:
                self.deliver("DELETED", old)
        for item in current.values():
            self.deliver("ADDED" if item["metadata"]["uid"] not in self.known else "MODIFIED", item)
        self.known = current
        self.relists += 1
        return str(listing["metadata"]["resourceVersion"])

    def _main(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                self.watch = watch.Watch()
                for event in self.watch.stream(
                    self.list_call,
                    resource_version=version,
                    timeout_seconds=WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                    **self.selectors,
                ):
                    obj = event.get("raw_object") or event.get("object") or {}
                    if event["type"] == "ERROR":
                        raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
                    version = obj.get("metadata", {}).get("resourceVersion") or version
                    if event["type"] == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if event["type"] == "DELETED":
                        self.known.pop(uid, None)
                    else:
                        self.known[uid] = obj
                    self.deliver(event["type"], obj)
                    if self.stopping.is_set():
                        return
            except ApiException as e:
                if e.status == 410:
                    logger.info("%s watch: resourceVersion %s expired (410 Gone): listing again", self.name, version)
                else:
                    logger.warning("%s watch failed (%s): listing again", self.name, e.status)
                    self.stopping.wait(1.0)
                version = None
            except Exception as e:  # a lost connection (API server restarting): list again once it is back
                if self.stopping.is_set():
                    return
                logger.info("%s watch interrupted (%s): listing again", self.name, type(e).__name__)
                self.stopping.wait(1.0)
                version = None


class ProcessNode:
    """
    A node of a real cluster whose pods are local processes (see the module docstring).

    ``kubeconfig``: the node's credentials. The cluster admin's kubeconfig is
    acceptable for this development node; a real kubelet authenticates as
    ``system:node:<name>`` (group ``system:nodes``) and the Node authorizer
    limits it to its own Node, Lease and pods.
    """

    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        *,
        name: str = "process-node",
        cpu: str = "4",
        memory: str = "8Gi",
        gpus: int = 0,
        ephemeral_storage: str = "50Gi",
        pods: int = 110,
        storage_class: str = "local-path",
        max_grace: float = 30.0,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.root = Path(root).absolute()
        self.storage_class = storage_class
        self.capacity = {
            "cpu": str(cpu),
            "memory": str(memory),
            "nvidia.com/gpu": str(gpus),
            "ephemeral-storage": str(ephemeral_storage),
            "pods": str(pods),
        }
        self.labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            **(labels or {}),
        }
        self.api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.runtime = NodeRuntime(self.root, self.core, max_grace=max_grace)
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pods: dict[str, asyncio.Task[None]] = {}  # pod uid -> the task running it
        self._finished: set[str] = set()  # pod uids whose containers ended
        self._finalizing: set[str] = set()  # pod uids whose final delete was sent
        self._background: set[asyncio.Task[Any]] = set()  # short requests in flight (held: tasks are weak)
        self._informers: list[Informer] = []
        self._ports_taken: set[tuple[str, int]] = set()  # container ports of the pods running here
        self.boot_id = str(uuid.uuid4())

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Register the Node and the StorageClass, start the heartbeats and the watches."""
        self._loop = asyncio.get_running_loop()
        self.root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._register)
        await asyncio.to_thread(self._storage_class)
        self._tasks = [asyncio.create_task(self._heartbeat(), name="node-heartbeat")]
        self._informers = [
            Informer(
                "pods",
                self.core.list_pod_for_all_namespaces,
                self._from_thread(self._on_pod),
                self._stopping,
                field_selector=f"spec.nodeName={self.name}",
            ),
            Informer(
                "claims",
                self.core.list_persistent_volume_claim_for_all_namespaces,
                self._from_thread(self._on_claim),
                self._stopping,
            ),
            Informer(
                "volumes",
                self.core.list_persistent_volume,
                self._from_thread(self._on_volume),
                self._stopping,
                label_selector=f"operator-engine.oceanprotocol.com/node={self.name}",
            ),
        ]
        for informer in self._informers:
            informer.thread.start()

    async def stop(self) -> None:
        """Kill the running pods (SIGTERM, then SIGKILL after their grace period) and stop watching."""
        self._stopping.set()
        self.runtime.max_grace = min(self.runtime.max_grace, STOP_GRACE)
        for informer in self._informers:
            if informer.watch is not None:
                informer.watch.stop()
        tasks = [*self._tasks, *self._pods.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Clean-ups already under way (a deleted pod being killed) end before the client closes.
        await asyncio.gather(*self._background, return_exceptions=True)
        self.api_client.close()

    async def __aenter__(self) -> ProcessNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def relists(self) -> int:
        """How many times the pod watch listed (1 at start, one more per 410 Gone or reconnect)."""
        return self._informers[0].relists if self._informers else 0

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _from_thread(self, handler: Callable[[str, dict[str, Any]], None]) -> Callable[[str, dict[str, Any]], None]:
        def deliver(kind: str, obj: dict[str, Any]) -> None:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                self._loop.call_soon_threadsafe(handler, kind, obj)

        return deliver

    async def _call(
        self,
        what: str,
        function: Callable[..., Any],
        *args: Any,
        ignore: Callable[[ApiException], bool] = _IGNORE_NOTHING,
        **kwargs: Any,
    ) -> Any:
        """A client call in a thread; errors it expects are ignored, others logged (the next event retries)."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except ApiException as e:
            if not ignore(e):
                logger.warning("node %s: %s failed: %s %s", self.name, what, e.status, e.reason)
        except Exception as e:  # the API server is unreachable (restarting): the next heartbeat or event retries
            if not self._stopping.is_set():
                logger.warning("node %s: %s failed: %r", self.name, what, e)
        return None

    # ---------------------------------------------------------------- the Node and its Lease

    def _node_status(self) -> dict[str, Any]:
        now = _now()

        def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": kind,
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                condition("MemoryPressure", False, "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", True, "KubeletReady", "process node is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": self.boot_id.replace("-", ""),
                "systemUUID": self.boot_id,
                "bootID": self.boot_id,
                "kernelVersion": platform.release(),
                "osImage": f"{platform.system()} (process node)",
                "containerRuntimeVersion": "process://operator-engine",
                "kubeletVersion": "v0.0.0-process-node",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self.labels["kubernetes.io/arch"],
            },
        }

    def _register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": self.labels}}
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(
                self.name, {"metadata": {"labels": self.labels}}, _content_type="application/merge-patch+json"
            )
        self.core.patch_node_status(
            self.name, {"status": self._node_status()}, _content_type="application/merge-patch+json"
        )
        self._renew_lease()

    def _renew_lease(self) -> None:
        coordination = client.CoordinationV1Api(self.api_client)
        node = self.core.read_node(self.name)
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            coordination.patch_namespaced_lease(
                self.name, "kube-node-lease", {"spec": spec}, _content_type="application/merge-patch+json"
            )
        except ApiException as e:
            if e.status != 404:
                raise
            coordination.create_namespaced_lease(
                "kube-node-lease",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node.metadata.uid}
                        ],
                    },
                    "spec": spec,
                },
            )

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        last_status = loop.time()
        while True:
            await asyncio.sleep(LEASE_RENEW)
            await self._call("renew the lease", self._renew_lease)
            if loop.time() - last_status >= STATUS_EVERY:
                last_status = loop.time()
                await self._call(
                    "report the node status",
                    self.core.patch_node_status,
                    self.name,
                    {"status": self._node_status()},
                    _content_type="application/merge-patch+json",
                )

    # ---------------------------------------------------------------- volumes

    def _storage_class(self) -> None:
        storage = client.StorageV1Api(self.api_client)
        with contextlib.suppress(ApiException):  # 409: it exists (a restart of the node)
            storage.create_storage_class(
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {"name": self.storage_class},
                    "provisioner": PROVISIONER,
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "Immediate",
                }
            )

    def _on_claim(self, kind: str, pvc: dict[str, Any]) -> None:
        spec, meta = pvc.get("spec") or {}, pvc["metadata"]
        if (
            kind == "DELETED"
            or meta.get("deletionTimestamp")
            or spec.get("volumeName")
            or spec.get("storageClassName") != self.storage_class
        ):
            return
        folder = self.root / "volumes" / f"pvc-{meta['uid']}"
        folder.mkdir(parents=True, exist_ok=True)
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{meta['uid']}",
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                "labels": {"operator-engine.oceanprotocol.com/node": self.name},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": self.storage_class,
                "volumeMode": "Filesystem",
                "local": {"path": str(folder)},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.name]}
                                ]
                            }
                        ]
                    }
                },
            },
        }
        self._spawn(
            self._call(
                f"provision a volume for {meta['namespace']}/{meta['name']}",
                self.core.create_persistent_volume,
                pv,
                ignore=_ignore(409),
            )
        )

    def _on_volume(self, kind: str, pv: dict[str, Any]) -> None:
        """A Released volume of ours (its claim is gone): remove its folder, then the PersistentVolume."""
        if kind == "DELETED" or (pv.get("status") or {}).get("phase") != "Released":
            return
        if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = ((pv.get("spec") or {}).get("local") or {}).get("path")
        if path and Path(path).parent == self.root / "volumes":
            shutil.rmtree(path, ignore_errors=True)
        self._spawn(
            self._call(
                f"delete volume {pv['metadata']['name']}",
                self.core.delete_persistent_volume,
                pv["metadata"]["name"],
                ignore=_ignore(404),
            )
        )

    # ---------------------------------------------------------------- pods

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        running = self._pods.get(uid)
        # A deleted pod's task is cancelled once: every later event of the pod (another delete shortening the
        # grace period, the garbage collector's own delete, our status report) would otherwise cancel its
        # clean-up half way, and the object would stay Terminating.
        if kind == "DELETED":
            if running is not None:
                self.runtime.grace_overrides[uid] = 0.0  # removed without us: kill now
                if not running.cancelling():
                    running.cancel()
            return
        if meta.get("deletionTimestamp"):
            if running is not None:
                if not running.cancelling():
                    self.runtime.grace_overrides[uid] = float(meta.get("deletionGracePeriodSeconds") or 0)
                    running.cancel()  # the task kills the process, then deletes the object
            elif uid not in self._finalizing:
                self._finalizing.add(uid)
                self._spawn(self._final_delete(pod))
            return
        phase = (pod.get("status") or {}).get("phase")
        if running is None and uid not in self._finished and phase not in TERMINAL:
            self._pods[uid] = asyncio.create_task(self._run_pod(pod), name=f"pod {meta['namespace']}/{meta['name']}")

    async def _final_delete(self, pod: dict[str, Any]) -> None:
        """The kubelet's last word on a deleted pod: remove the object at once (grace 0, this uid only).

        Retried, as the kubelet does, until the API server takes it or the pod is gone (404, or 409: another
        pod of that name), so that an API server restarting at that moment leaves no pod Terminating.
        """
        meta = pod["metadata"]
        options = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"]))
        await self._until_taken(
            f"delete pod {meta['namespace']}/{meta['name']}",
            (404, 409),
            self.core.delete_namespaced_pod,
            meta["name"],
            meta["namespace"],
            body=options,
        )
        self.runtime.grace_overrides.pop(meta["uid"], None)

    async def _end_killed(
        self, pod: dict[str, Any], started: str, run: asyncio.Task[Result] | None, *, report: bool
    ) -> None:
        if run is not None and not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        if report:
            await self._after_kill(pod, started)

    async def _after_kill(self, pod: dict[str, Any], started: str) -> None:
        """A deleted pod's container was killed: report it Failed (143: SIGTERM), then the final delete."""
        await self._pod_status(
            pod,
            "Failed",
            started,
            {"terminated": {"exitCode": 143, "reason": "Error", "startedAt": started, "finishedAt": _now()}},
        )
        await self._final_delete(pod)

    async def _pod_status(
        self,
        pod: dict[str, Any],
        phase: str,
        started: str,
        state: dict[str, Any],
        reason: str | None = None,
        message: str | None = None,
        ready: bool | None = None,
    ) -> None:
        meta = pod["metadata"]
        status = kubelet_pod_status(pod, phase, started, _now(), state, reason, message, ready=ready)
        # As the kubelet's status manager: retried until the API server takes it (it may be restarting),
        # the pod is gone, or the node stops.
        await self._until_taken(
            f"report the status of pod {meta['namespace']}/{meta['name']}",
            (404,),
            self.core.patch_namespaced_pod_status,
            meta["name"],
            meta["namespace"],
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    async def _until_taken(
        self, what: str, final: tuple[int, ...], function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """A client call in a thread, retried until the API server takes it or answers ``final``, or the node stops."""
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(function, *args, **kwargs)
                return
            except ApiException as e:
                if e.status in final:
                    return
                logger.warning("node %s: %s: %s %s (retrying)", self.name, what, e.status, e.reason)
            except Exception as e:  # unreachable: the API server is restarting
                logger.warning("node %s: %s: %r (retrying)", self.name, what, e)
            await asyncio.sleep(STATUS_RETRY)

    async def _run_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        run: asyncio.Task[Result] | None = None
        ports = container_ports(pod)
        probe = readiness_probe(pod)
        ended = asyncio.Event()
        prober: asyncio.Task[None] | None = None
        holding = False
        started = _now()
        try:
            # Local processes share one network namespace: a pod whose ports another pod of this node
            # holds waits (Pending) until they are free, instead of failing to bind them.
            while ports & self._ports_taken:
                await asyncio.sleep(PORT_WAIT)
            self._ports_taken |= ports
            holding = True
            started = _now()
            await self._pod_status(
                pod, "Running", started, {"running": {"startedAt": started}}, ready=None if probe is None else False
            )
            run = asyncio.create_task(self.runtime.run(pod, pod))
            if probe is not None:
                prober = asyncio.create_task(self._probe(pod, started, probe, ended))
            done, _ = await asyncio.wait({run}, timeout=deadline)
            ended.set()
            if prober is not None:
                await prober  # it ends at once, so no probe result lands after the final status
            if not done:
                # The kubelet kills a pod past its activeDeadlineSeconds: phase Failed, reason DeadlineExceeded.
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                message = "Pod was active on the node longer than the specified deadline"
                await self._pod_status(
                    pod,
                    "Failed",
                    started,
                    {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": started, "finishedAt": _now()}},
                    reason="DeadlineExceeded",
                    message=message,
                )
            else:
                result = run.result()
                await self._pod_status(
                    pod,
                    "Succeeded" if result.exit_code == 0 else "Failed",
                    started,
                    {"terminated": terminated_state(result, started, _now())},
                )
            self._finished.add(uid)
        except asyncio.CancelledError:
            # Deleted (or the node stops): SIGTERM, SIGKILL after the grace period, then the final delete. The
            # clean-up runs as a task of its own, shielded: nothing may cut it short once it has begun.
            self._finished.add(uid)
            stopping = self._stopping.is_set()
            if not stopping:
                self._finalizing.add(uid)
            ending = asyncio.create_task(self._end_killed(pod, started, run, report=not stopping))
            self._background.add(ending)
            ending.add_done_callback(self._background.discard)
            await asyncio.shield(ending)
            raise
        finally:
            ended.set()
            if prober is not None and not prober.done():
                prober.cancel()
            if holding:
                self._ports_taken -= ports
            self._pods.pop(uid, None)

    async def _probe(self, pod: dict[str, Any], started: str, probe: dict[str, Any], ended: asyncio.Event) -> None:
        """
        The readiness probe (``httpGet``, on 127.0.0.1): the pod's Ready condition follows it,
        ``successThreshold`` successes in a row to become ready, ``failureThreshold`` failures to stop.
        """
        period = float(probe.get("periodSeconds") or 10)
        timeout = float(probe.get("timeoutSeconds") or 1)
        successes_needed = int(probe.get("successThreshold") or 1)
        failures_needed = int(probe.get("failureThreshold") or 3)
        url = probe["url"]
        ready, successes, failures = False, 0, 0
        wait = float(probe.get("initialDelaySeconds") or 0)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), wait)
            if ended.is_set():
                return
            wait = period
            ok = await asyncio.to_thread(http_probe, url, timeout)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            verdict = True if successes >= successes_needed else False if failures >= failures_needed else ready
            if verdict != ready and not ended.is_set():
                ready = verdict
                await self._pod_status(pod, "Running", started, {"running": {"startedAt": started}}, ready=ready)


def container_ports(pod: dict[str, Any]) -> set[tuple[str, int]]:
    """The (protocol, port) pairs the pod's containers declare: on this node they are host ports."""
    return {
        (str(port.get("protocol") or "TCP"), int(port["containerPort"]))
        for container in (pod.get("spec") or {}).get("containers") or []
        for port in container.get("ports") or []
        if port.get("containerPort")
    }


def readiness_probe(pod: dict[str, Any]) -> dict[str, Any] | None:
    """
    The first container's ``readinessProbe`` with its URL on 127.0.0.1 (a named port resolved from the
    container's ports), or None: no probe, or one this node cannot run (exec, tcpSocket, grpc: then
    running means ready, as before).
    """
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        return None
    container = containers[0]
    probe = container.get("readinessProbe") or {}
    get = probe.get("httpGet")
    if not get:
        return None
    port = get.get("port")
    if isinstance(port, str) and not port.isdigit():
        port = next((p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == port), None)
        if port is None:
            return None
    scheme = str(get.get("scheme") or "HTTP").lower()
    path = get.get("path") or "/"
    return {**probe, "url": f"{scheme}://127.0.0.1:{int(port)}{path if path.startswith('/') else '/' + path}"}


#: Probes go straight to the pod (no proxy from the environment); HTTPS is not verified, as the kubelet's.
_PROBE_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl._create_unverified_context())
)


def http_probe(url: str, timeout: float) -> bool:
    """One httpGet probe: a status from 200 to 399 succeeds, anything else (or no answer) fails."""
    try:
        with _PROBE_OPENER.open(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 400
    except urllib.error.HTTPError as e:
        return 200 <= e.code < 400
    except (OSError, ValueError):
        return False
