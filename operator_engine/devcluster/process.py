"""
:class:`ProcessRuntime`: the embedded cluster's kubelet runs each pod as a LOCAL HOST PROCESS.

    FOR TRYING AND DEVELOPING ONLY. There is no container and no isolation:
    the container image is ignored, the command runs as your user with your
    user's rights, on your file system and network. Never point it at
    workflows you do not trust; never use it in production.

What a pod becomes:

* The (first) container's ``command`` + ``args`` run as one process (in its own
  process group) with ``$(VAR)`` references expanded as Kubernetes does.
  The executable is looked up in ``PATH``, whose first entry is the directory
  of the running Python (``sys.executable``), so ``python`` and
  ``operator-engine`` are the project's own. A container without ``command``
  fails: there is no image to take an entrypoint from.
* Volumes become folders under ``root``:

  - a PersistentVolumeClaim -> ``<root>/volumes/<namespace>/<claimName>/``
    (``subPath`` -> a subfolder of it, created if missing). A new PVC of a
    reused name starts empty, as a newly provisioned volume would;
  - a ConfigMap or Secret volume -> files written from the object in the API
    server's store (one file with ``subPath``, else one per key);
  - ``emptyDir`` -> a folder of the pod;
  - a ``projected`` volume (ConfigMap, Secret, downward-API and
    ``serviceAccountToken`` sources) -> files written as above; the token only
    where the runtime can ask an API server for one (ProcessNode, node.py).

* Paths: the container's mount paths are mapped onto those host folders by
  rewriting path prefixes (longest mount path first) in the command, the
  arguments, ``workingDir`` and the env values. A directory that is not a
  mount but holds mounts (``/data`` when only ``/data/inputs`` ... are
  mounted) maps to a per-pod folder of symlinks. ``/tmp`` maps to a per-pod
  temporary folder, or to the pod's own ``/tmp`` volume when it mounts one
  (in command and arguments; in the env ``TMPDIR`` and ``HOME`` point there).
  ``readOnlyRootFilesystem`` cannot be enforced: there is no root filesystem
  of the pod's own. A host path given in an env value (such as
  ``LOCAL_STORAGE_DIR``) is left alone unless it starts with a mount path.
* Env: only the pod's own env (plain values, ``valueFrom.secretKeyRef``,
  ``configMapKeyRef``, ``fieldRef`` to the pod's name/namespace/uid,
  ``envFrom``), plus ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``,
  ``PYTHONUNBUFFERED=1`` and ``TERMINATION_LOG``. Nothing of the host's (or
  the operator's) environment leaks in: a pod sees what it would see in a
  container.
* ``TERMINATION_LOG`` names a per-pod host file, which is also what the
  container's ``terminationMessagePath`` maps to; it is read after exit (at
  most 4096 bytes). With ``terminationMessagePolicy: FallbackToLogsOnError``
  a failed container with an empty file reports the tail of its output
  (last 80 lines, at most 2048 bytes), as the kubelet does.
* stdout and stderr go, merged, to the pod's log (``kubectl logs`` serves it
  while the process runs and after) and to ``<pod folder>/output.log``.
* Cancelling :meth:`ProcessRuntime.run` (Job or Pod deleted,
  ``activeDeadlineSeconds`` expired, cluster stopped) sends SIGTERM to the
  first process, which ignores it unless it handles it (as a container's
  PID 1: see ``AS_CONTAINER_INIT``), then SIGKILL to the process group after
  the grace period (the deleted pod's ``deletionGracePeriodSeconds``, else
  ``terminationGracePeriodSeconds``; at most ``max_grace``). However the first
  process ends, whatever it left in its group gets SIGKILL before the first
  process is reaped (``processgroup.py``: after the reap, the group id may be
  another's).
* Exit codes are reported as a kubelet would: the process's code, or 128 + N
  when killed by signal N.

Layout under ``root``: ``volumes/<namespace>/<claim>/`` and
``pods/<namespace>/<pod>/`` (``tmp/``, ``fs/`` symlink tree, ``files/`` for
ConfigMap/Secret volumes, ``termination-log``, ``output.log``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from operator_engine.devcluster.apiserver import ApiError
from operator_engine.devcluster.processgroup import ProcessGroup
from operator_engine.devcluster.runtime import Result, Runtime

__all__ = ["ProcessRuntime", "PodSetupError", "PathMapper"]

#: The kubelet reads at most this many bytes of a termination message file.
TERMINATION_MESSAGE_LIMIT = 4096
#: FallbackToLogsOnError: the last 80 lines of the log, at most 2048 bytes.
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
#: Default PATH after the running Python's folder (a container's usual one).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Keep at most this much of a pod's output in the API server's memory.
LOG_LIMIT = 4 * 1024 * 1024

#: The container's command runs as its PID 1 would: a container's init gets only the signals
#: it installed a handler for (the kernel drops the others), so SIGTERM does nothing to a PID 1
#: without a handler: an algorithm under the /bin/sh wrapper keeps running through the whole
#: grace period until SIGKILL, as it does on a real node. Here the first process starts with
#: SIGTERM ignored (exec keeps the disposition; a program that installs a handler gets the signal).
#: Unlike in a container, its children inherit the ignored SIGTERM; only the first process is signalled.
AS_CONTAINER_INIT = ("/bin/sh", "-c", 'trap "" TERM; unset PWD; exec "$0" "$@"')  # (PWD: sh's, not the pod's)

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSetupError(Exception):
    """The pod cannot start (a missing ConfigMap, Secret, claim or executable): its reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PathMapper:
    """
    Rewrites container paths to host paths by prefix, longest prefix first, in one pass.

    A prefix matches only at the start of a path (not after a letter, digit,
    ``.``, ``-``, ``_`` or ``/``) and only as a whole path component, so
    ``/data`` maps ``/data`` and ``/data/x`` but not ``/database`` or
    ``http://host/data/x``.
    """

    def __init__(self, mapping: Mapping[str, str | Path]) -> None:
        self.mapping = {str(PurePosixPath(k)): str(v) for k, v in mapping.items()}
        keys = sorted(self.mapping, key=len, reverse=True)
        if keys:
            alternatives = "|".join(re.escape(k) for k in keys)
            self._pattern: re.Pattern[str] | None = re.compile(rf"(?<![\w.\-/:])({alternatives})(?![\w.\-])")
        else:
            self._pattern = None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(1)], text)


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, others stay."""

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(replace, text)


def _decode_secret(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's values as text: ``data`` is base64; ``stringData`` (if the store kept it) wins."""
    values: dict[str, str] = {}
    for key, encoded in (secret.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(encoded).decode("utf-8", errors="replace")
        except (ValueError, TypeError):
            values[key] = str(encoded)
    values.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return values


def _configmap_values(configmap: dict[str, Any]) -> dict[str, str | bytes]:
    values: dict[str, str | bytes] = {k: str(v) for k, v in (configmap.get("data") or {}).items()}
    for key, encoded in (configmap.get("binaryData") or {}).items():
        values[key] = base64.b64decode(encoded)
    return values


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _fallback_message(output: bytes) -> str:
    lines = output.splitlines(keepends=True)[-FALLBACK_LINES:]
    tail = b"".join(lines)[-FALLBACK_BYTES:]
    return tail.decode("utf-8", errors="replace")


class ProcessRuntime(Runtime):
    """
    Runs each pod's container command as a local process (see the module docstring: no isolation).

    ``root`` holds the volumes and the pods' folders. The runtime reads
    ConfigMaps, Secrets and PVCs from the cluster's store: the cluster calls
    :meth:`attach` (``EmbeddedCluster(runtime=ProcessRuntime(root))`` does it).
    """

    def __init__(self, root: str | Path, *, max_grace: float = 5.0, keep_pod_dirs: bool = True) -> None:
        super().__init__()
        self.root = Path(root).absolute()
        self.max_grace = max_grace
        self.keep_pod_dirs = keep_pod_dirs
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths

    def volume_dir(self, namespace: str, claim: str) -> Path:
        """The host folder of a PersistentVolumeClaim."""
        return self.root / "volumes" / namespace / claim

    def pod_dir(self, namespace: str, pod_name: str) -> Path:
        return self.root / "pods" / namespace / pod_name

    # ------------------------------------------------------------------ store

    # The three methods below are the runtime's only contact with a cluster:
    # the embedded cluster's store here; ProcessNode (node.py) overrides them
    # to read a real API server and its bound PersistentVolumes.

    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap, Secret or PersistentVolumeClaim of the pod's namespace (``kind`` in lower case), or None."""
        if self.api is None:
            raise RuntimeError("ProcessRuntime is not attached to an API server (use it through EmbeddedCluster)")
        try:
            return self.api.get(self.api.spec_for(kind), namespace, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def publish_log(self, namespace: str, pod_name: str, text: str) -> None:
        """The pod's output so far (what ``kubectl logs`` serves from the embedded API server)."""
        if self.api is not None:
            self.api.pod_logs[(namespace, pod_name)] = text

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """
        The host folder of a PersistentVolumeClaim: ``volume_dir``, emptied when
        the claim's uid changes (a new claim of a reused name is a new volume).
        """
        pvc = self.get_object("persistentvolumeclaim", namespace, claim)
        if pvc is None:
            raise PodSetupError("Unschedulable", f'persistentvolumeclaim "{claim}" not found')
        folder = self.volume_dir(namespace, claim)
        marker = folder.parent / f".{claim}.uid"
        uid = pvc["metadata"].get("uid", "")
        known = marker.read_text() if marker.exists() else None
        if known != uid:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(uid)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _configmap(self, namespace: str, name: str, optional: bool = False) -> dict[str, str | bytes] | None:
        obj = self.get_object("configmap", namespace, name)
        if obj is None:
            if optional:
                return None
            raise PodSetupError("CreateContainerConfigError", f'configmap "{name}" not found')
        return _configmap_values(obj)

    def _secret(self, namespace: str, name: str, optional: bool = False) -> dict[str, str] | None:
        obj = self.get_object("secret", namespace, name)
        if obj is None:
            if optional:
                return None
            raise PodSetupError("CreateContainerConfigError", f'secret "{name}" not found')
        return _decode_secret(obj)

    # ------------------------------------------------------------------ volumes

    @staticmethod
    def _write_files(folder: Path, values: Mapping[str, str | bytes], items: list[dict[str, Any]] | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        selected = [(i["key"], i.get("path", i["key"])) for i in items] if items else [(k, k) for k in values]
        for key, rel in selected:
            if key not in values:
                raise PodSetupError("CreateContainerConfigError", f'key "{key}" not found')
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            value = values[key]
            if isinstance(value, bytes):
                target.write_bytes(value)
            else:
                target.write_text(value, encoding="utf-8")

    def _mounts(self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
        """Container mount path -> host path (a folder, or a file for a subPath of a ConfigMap/Secret)."""
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        mounts: dict[str, Path] = {}
        sources: dict[str, Path] = {}  # volume name -> its host folder
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name", ""))
            if volume is None:
                raise PodSetupError("CreateContainerConfigError", f'volume "{mount.get("name")}" not found')
            name = volume["name"]
            if name not in sources:
                if "persistentVolumeClaim" in volume:
                    sources[name] = self.claim_dir(namespace, volume["persistentVolumeClaim"]["claimName"])
                elif "configMap" in volume:
                    ref = volume["configMap"]
                    values = self._configmap(namespace, ref["name"], ref.get("optional", False)) or {}
                    sources[name] = pod_dir / "files" / name
                    self._write_files(sources[name], values, ref.get("items"))
                elif "secret" in volume:
                    ref = volume["secret"]
                    svalues = self._secret(namespace, ref["secretName"], ref.get("optional", False)) or {}
                    sources[name] = pod_dir / "files" / name
                    self._write_files(sources[name], svalues, ref.get("items"))
                elif "emptyDir" in volume:
                    sources[name] = pod_dir / "emptydir" / name
                    sources[name].mkdir(parents=True, exist_ok=True)
                elif "projected" in volume:
                    sources[name] = pod_dir / "files" / name
                    self._write_files(sources[name], self._projected(pod, volume["projected"]), None)
                else:
                    kinds = ", ".join(k for k in volume if k != "name")
                    raise PodSetupError(
                        "CreateContainerConfigError",
                        f'volume "{name}": type {kinds} is not supported by the process runtime',
                    )
            host = sources[name]
            sub = mount.get("subPath")
            if sub:
                host = host / sub
                if "persistentVolumeClaim" in volume or "emptyDir" in volume:
                    host.mkdir(parents=True, exist_ok=True)  # the kubelet creates a missing subPath
                elif not host.exists():
                    raise PodSetupError("CreateContainerConfigError", f'subPath "{sub}" not found in volume "{name}"')
            mounts[str(PurePosixPath(mount["mountPath"]))] = host
        return mounts

    def _projected(self, pod: dict[str, Any], projected: dict[str, Any]) -> dict[str, str | bytes]:
        """
        The files of a ``projected`` volume (path -> content) from its ConfigMap, Secret, downward-API
        and ``serviceAccountToken`` sources: what the API server's ServiceAccount admission adds to
        every pod that does not opt out (``kube-api-access-*``: token, ``ca.crt``, namespace).
        """
        namespace = pod["metadata"]["namespace"]
        files: dict[str, str | bytes] = {}

        def pick(values: Mapping[str, str | bytes], items: list[dict[str, Any]] | None) -> None:
            for item in items or [{"key": k, "path": k} for k in values]:
                if item["key"] not in values:
                    raise PodSetupError("CreateContainerConfigError", f'key "{item["key"]}" not found')
                files[item.get("path", item["key"])] = values[item["key"]]

        for source in projected.get("sources") or []:
            if "configMap" in source:
                ref = source["configMap"]
                pick(self._configmap(namespace, ref["name"], ref.get("optional", False)) or {}, ref.get("items"))
            elif "secret" in source:
                ref = source["secret"]
                pick(self._secret(namespace, ref["name"], ref.get("optional", False)) or {}, ref.get("items"))
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    value = self._field(pod, (item.get("fieldRef") or {}).get("fieldPath", ""))
                    if value is None:
                        raise PodSetupError(
                            "CreateContainerConfigError", f'downwardAPI item "{item.get("path")}": unsupported field'
                        )
                    files[item["path"]] = value
            elif "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                files[token["path"]] = self.service_account_token(pod, token)
            else:
                kinds = ", ".join(source)
                raise PodSetupError("CreateContainerConfigError", f"projected source {kinds} is not supported")
        return files

    def service_account_token(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        """A token for the pod's ServiceAccount (a projected ``serviceAccountToken``): none without an API server."""
        raise PodSetupError(
            "CreateContainerConfigError",
            "this runtime cannot request service-account tokens (set automountServiceAccountToken: false)",
        )

    def node_env(self, pod: dict[str, Any], mounts: Mapping[str, Path]) -> dict[str, str]:
        """Variables the node gives every pod before its own env (a kubelet's KUBERNETES_SERVICE_*): none here."""
        return {}

    @staticmethod
    def _field(pod: dict[str, Any], field: str) -> str | None:
        """A downward-API ``fieldRef`` of the pod (the fields this runtime knows), or None."""
        meta = pod["metadata"]
        value = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "spec.nodeName": (pod.get("spec") or {}).get("nodeName") or "localhost",
            "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        }.get(field)
        return None if value is None else str(value)

    def _path_mapping(self, mounts: dict[str, Path], pod_dir: Path) -> dict[str, Path]:
        """Mounts, plus every directory above a mount mapped into a symlink tree ``<pod>/fs``."""
        fs = pod_dir / "fs"
        fs.mkdir(parents=True, exist_ok=True)
        mapping: dict[str, Path] = dict(mounts)
        for path in sorted(mounts, key=len):
            outer = next(
                (
                    m
                    for m in sorted(mounts, key=len, reverse=True)
                    if m != path and path.startswith(m.rstrip("/") + "/")
                ),
                None,
            )
            if outer is not None:
                # A mount inside another mount: its mount point appears in the outer volume.
                inside = mounts[outer] / os.path.relpath(path, outer)
                if mounts[outer].is_dir() and not inside.exists() and not inside.is_symlink():
                    inside.parent.mkdir(parents=True, exist_ok=True)
                    inside.symlink_to(mounts[path])
                continue
            link = fs / path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink() and not link.exists():
                link.symlink_to(mounts[path])
            for parent in PurePosixPath(path).parents:
                if str(parent) != "/" and str(parent) not in mapping:
                    mapping[str(parent)] = fs / str(parent).lstrip("/")
        return mapping

    # ------------------------------------------------------------------ env

    def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                values = self._configmap(namespace, ref["name"], ref.get("optional", False)) or {}
                env.update({prefix + k: v for k, v in values.items() if isinstance(v, str)})
            elif "secretRef" in source:
                ref = source["secretRef"]
                env.update(
                    {
                        prefix + k: v
                        for k, v in (self._secret(namespace, ref["name"], ref.get("optional", False)) or {}).items()
                    }
                )
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = _expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            value: str | bytes | None = None
            key_ref = next(
                (
                    (kind, source[field], lookup)
                    for field, kind, lookup in (
                        ("secretKeyRef", "Secret", self._secret),
                        ("configMapKeyRef", "ConfigMap", self._configmap),
                    )
                    if field in source
                ),
                None,
            )
            if key_ref is not None:
                kind, ref, lookup = key_ref
                entries: Mapping[str, str | bytes] | None = lookup(namespace, ref["name"], ref.get("optional", False))
                if entries is not None:
                    value = entries.get(ref["key"])
                    if value is None and not ref.get("optional", False):
                        raise PodSetupError(
                            "CreateContainerConfigError",
                            f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}",
                        )
            elif "fieldRef" in source:
                value = self._field(pod, source["fieldRef"].get("fieldPath", ""))
            if value is not None:
                env[name] = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
        return env

    # ------------------------------------------------------------------ running

    def prepare(self, pod: dict[str, Any]) -> tuple[list[str], dict[str, str], Path, Path]:
        """The argv, env and working directory of the pod's process, and its pod folder."""
        meta = pod["metadata"]
        containers = (pod.get("spec") or {}).get("containers") or []
        if not containers:
            raise PodSetupError("CreateContainerConfigError", "the pod has no containers")
        container = containers[0]
        pod_dir = self.pod_dir(meta["namespace"], meta["name"])
        tmp = pod_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        termination_log = pod_dir / "termination-log"
        termination_log.write_bytes(b"")
        mounts = self._mounts(pod, container, pod_dir)
        if "/tmp" in mounts:  # a pod with a read-only root filesystem brings its own /tmp (an emptyDir)
            tmp = mounts["/tmp"]
        mapping = self._path_mapping(mounts, pod_dir)
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        mapping[message_path] = termination_log
        # Env values keep host paths under /tmp (a work directory such as LOCAL_STORAGE_DIR often is one),
        # even when the pod mounts its own /tmp: TMPDIR points there instead.
        env_mapper = PathMapper({k: v for k, v in mapping.items() if k != "/tmp"})
        arg_mapper = PathMapper({**mapping, "/tmp": tmp})

        pod_env = self._env(pod, container)
        command = [_expand(str(a), pod_env) for a in container.get("command") or []]
        args = [_expand(str(a), pod_env) for a in container.get("args") or []]
        if not command:
            raise PodSetupError(
                "StartError",
                f'container "{container.get("name")}" has no command: the process '
                f"runtime ignores images, so it cannot use the image's entrypoint",
            )
        # The node's variables first (a kubelet's KUBERNETES_SERVICE_*); the pod's own env wins.
        env = {**self.node_env(pod, mounts), **{k: env_mapper(v) for k, v in pod_env.items()}}
        env.update(
            {
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), DEFAULT_PATH]),
                "HOME": str(tmp),
                "TMPDIR": str(tmp),
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
                "TERMINATION_LOG": str(termination_log),
            }
        )
        argv = [arg_mapper(a) for a in command + args]
        executable = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
        if executable is None or not os.access(executable, os.X_OK):
            raise PodSetupError("StartError", f'exec: "{argv[0]}": executable file not found in $PATH')
        argv[0] = executable
        workdir = container.get("workingDir")
        cwd = Path(arg_mapper(workdir)) if workdir else pod_dir / "fs"
        cwd.mkdir(parents=True, exist_ok=True)
        return argv, env, cwd, pod_dir

    async def run(self, pod: dict[str, Any], job: dict[str, Any]) -> Result:
        meta = pod["metadata"]
        log_key = (meta["namespace"], meta["name"])
        try:
            argv, env, cwd, pod_dir = self.prepare(pod)
        except (PodSetupError, OSError) as e:
            message = e.message if isinstance(e, PodSetupError) else f"cannot set up the pod: {e}"
            self.publish_log(*log_key, message + "\n")
            return Result(exit_code=128, message=message, logs=message + "\n")
        container = pod["spec"]["containers"][0]
        output = bytearray()
        log_file = (pod_dir / "output.log").open("wb")
        # Not an asyncio subprocess: its child watcher reaps the first process the moment it exits, and a
        # process group may be signalled only while its leader is unreaped (processgroup.py says why).
        group = ProcessGroup(
            [*AS_CONTAINER_INIT, *argv],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        async def pump(stdout: asyncio.StreamReader) -> None:
            while chunk := await stdout.read(65536):
                log_file.write(chunk)
                log_file.flush()
                output.extend(chunk)
                if len(output) > LOG_LIMIT:
                    del output[: len(output) - LOG_LIMIT]
                self.publish_log(*log_key, output.decode("utf-8", errors="replace"))

        reader: asyncio.Task[None] | None = None
        pipe: asyncio.BaseTransport | None = None
        try:
            stdout = asyncio.StreamReader()
            pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stdout), group.popen.stdout
            )
            reader = asyncio.create_task(pump(stdout))
            returncode = await group.ended()  # exited, not reaped: a zombie, which keeps the group id ours
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), timeout=2.0)
        except asyncio.CancelledError:
            await self._kill(group, min(self.grace_period(pod), self.max_grace))
            raise
        finally:
            # Whatever it left behind in its group, while the leader is still unreaped; it is reaped last.
            group.signal_group(signal.SIGKILL)
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if pipe is not None:
                pipe.close()
            elif group.popen.stdout is not None:
                group.popen.stdout.close()
            log_file.close()
            await group.reap_when_ended()
        exit_code = _exit_code(returncode)
        message_file = pod_dir / "termination-log"
        message = (
            message_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode("utf-8", errors="replace")
            if message_file.exists()
            else ""
        )
        policy = container.get("terminationMessagePolicy", "File")
        if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
            message = _fallback_message(bytes(output))
        logs = output.decode("utf-8", errors="replace")
        if not self.keep_pod_dirs:
            shutil.rmtree(pod_dir, ignore_errors=True)
        return Result(exit_code=exit_code, message=message or None, logs=logs)

    def grace_period(self, pod: dict[str, Any]) -> float:
        """Seconds between SIGTERM and SIGKILL: ``terminationGracePeriodSeconds``, at most ``max_grace``."""
        return min(float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)), self.max_grace)

    async def _kill(self, group: ProcessGroup, grace: float) -> None:
        """As the kubelet: SIGTERM to the container's first process, SIGKILL to all once the grace period is over.

        The container runtime signals PID 1 alone; when it ends, the kernel kills
        the rest of the container (here: the SIGKILL to the process group, which
        :meth:`run` sends in any case before it reaps the first process).
        """
        if group.exit_status() is not None:
            return
        group.signal_leader(signal.SIGTERM)
        try:
            await asyncio.wait_for(group.ended(), timeout=max(grace, 0.0))
        except TimeoutError:
            group.signal_group(signal.SIGKILL)
            await group.ended()
