"""
The operator on a REAL control plane: what ``operator-engine dev --control-plane real`` and the
``tests/realcluster`` tier both start, one code path.

* :class:`~operator_engine.devcluster.controlplane.ControlPlane`: etcd,
  kube-apiserver, kube-controller-manager and kube-scheduler built from the
  Kubernetes sources (``scripts/control-plane.sh``), on loopback ports;
* a :class:`~operator_engine.devcluster.node.ProcessNode` whose pods are local
  processes (for trying and developing only: no isolation);
* ``kubernetes/`` installed with the real kubectl (:func:`install`), except
  the operator's Deployment: the operator runs here as a local process
  (:class:`OperatorProcess`) AS ITS ServiceAccount, with a token from the
  TokenRequest API, so the Role in ``kubernetes/binding.yml`` is exactly what
  it may do; its settings come from the ConfigMap the Deployment would read
  (``envFrom``), as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import operator_engine

__all__ = [
    "MissingBinaries",
    "NAMESPACE",
    "OPERATOR_ACCOUNT",
    "OperatorProcess",
    "RealStack",
    "START_MARK",
    "install",
    "manifests_dir",
    "operator_environment",
    "require_assets",
    "running_real_stack",
    "wait_process",
]

NAMESPACE = "ocean-compute"
OPERATOR_ACCOUNT = "ocean-compute-operator"
OPERATOR_CONFIGMAP = "ocean-compute-operator-config"
#: The StorageClass of the process node: the operator's STORAGE_CLASS here.
STORAGE_CLASS = "local-path"
STOP_TIMEOUT = 30.0
#: The line written into the operator's log before each start (a reader splits the runs at it).
START_MARK = "===== operator start #"


class MissingBinaries(Exception):
    """No etcd / kube-apiserver / kube-controller-manager / kube-scheduler were found."""


def require_assets() -> Path:
    """The folder of the control plane's binaries, or :class:`MissingBinaries` saying how to get them."""
    from operator_engine.devcluster.controlplane import find_assets

    assets = find_assets()
    if assets is None:
        raise MissingBinaries(
            "no Kubernetes control-plane binaries found: run scripts/control-plane.sh (it builds "
            "them once, then prints their folder) or set KUBEBUILDER_ASSETS to a folder holding "
            "etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl"
        )
    return assets


def manifests_dir() -> Path:
    path = Path(operator_engine.__file__).parents[1] / "kubernetes"
    if not path.is_dir():
        raise FileNotFoundError(f"the manifests folder {path} is missing (run from a clone of the repository)")
    return path


def install(control_plane: Any, workdir: Path) -> Path:
    """
    ``kubectl apply`` every manifest of ``kubernetes/`` but the operator's
    Deployment (the operator runs as a local process here, see the module
    docstring); returns the file applied. Raises RuntimeError with kubectl's
    error if the API server refuses one.
    """
    documents: list[dict[str, Any]] = []
    for path in sorted(manifests_dir().glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            # kustomization.yaml is kustomize's input, not an object of the cluster.
            if isinstance(doc, dict) and doc.get("kind") not in ("Deployment", "Kustomization"):
                documents.append(doc)
    # Namespace first, then the CRD, then the rest: what `kubectl apply -f kubernetes/` needs in one go.
    order = {"Namespace": 0, "CustomResourceDefinition": 1}
    documents.sort(key=lambda d: order.get(d.get("kind", ""), 2))
    applied = workdir / "install.yaml"
    applied.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
    done = control_plane.kubectl("apply", "-f", str(applied))
    if done.returncode != 0:
        raise RuntimeError(f"kubectl apply -f {applied} failed: {(done.stderr or done.stdout).strip()}")
    done = control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/workflows.oceanprotocol.com"
    )
    if done.returncode != 0:
        raise RuntimeError(f"the WorkFlow CRD was not established: {(done.stderr or done.stdout).strip()}")
    return applied


def operator_environment(
    control_plane: Any,
    kubeconfig: Path,
    overrides: Mapping[str, str | None] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    The operator process's environment: ``base`` (default os.environ) without
    any operator variable, then the ConfigMap ``ocean-compute-operator-config``
    (as the Deployment's ``envFrom``), ``OPERATOR_NAMESPACE``, the
    ServiceAccount's ``KUBECONFIG``, the node's StorageClass, then ``overrides``
    (a None value unsets).
    """
    from operator_engine import config as config_module

    done = control_plane.kubectl("get", "configmap", OPERATOR_CONFIGMAP, "-n", NAMESPACE, "-o", "json")
    if done.returncode != 0:
        raise RuntimeError(f"cannot read the operator's ConfigMap: {(done.stderr or done.stdout).strip()}")
    settings: dict[str, str] = json.loads(done.stdout).get("data") or {}
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in config_module.VARIABLE_NAMES}
    env.update(settings)
    from operator_engine.demo import LOOPBACK_NETWORKS

    # Loopback fetching, as embedded dev allows it (the demo data and the tests' servers are
    # local); no metrics port unless asked, so that several stacks can run side by side.
    env.update(
        {
            "OPERATOR_NAMESPACE": NAMESPACE,
            "KUBECONFIG": str(kubeconfig),
            "STORAGE_CLASS": STORAGE_CLASS,
            "PYTHONUNBUFFERED": "1",
            "CONFIGURE_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
            "METRICS_PORT": "0",
        }
    )
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


class OperatorProcess:
    """
    The operator as a child process, in its own session: ``command``, by default ``operator-engine run``
    (kopf, standalone, namespace ocean-compute); its output is appended to ``log_path``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        command: Sequence[str] = (sys.executable, "-m", "operator_engine", "run"),
        cwd: Path | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.command = list(command)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n{START_MARK}{self.starts} =====\n".encode())
            log.flush()
            # Its own session: a Ctrl-C in the terminal reaches only `dev`, which stops it in order.
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no clean-up, nothing flushed (what a crash or an OOM kill does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM (kopf stops gracefully), SIGKILL if it does not end in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class RealStack:
    """A running control plane + process node (+ the operator process, if asked)."""

    control_plane: Any  # ControlPlane
    node: Any  # ProcessNode
    workdir: Path
    kubeconfig: Path  # the admin's: for the user and kubectl
    operator_kubeconfig: Path  # the operator's ServiceAccount
    results: Path
    operator: OperatorProcess | None = None
    env: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running_real_stack(
    workdir: Path,
    *,
    operator_env: Mapping[str, str | None] | None = None,
    with_operator: bool = True,
    audit: bool = True,
    assets: Path | None = None,
    node_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[RealStack]:
    """
    Start the control plane under ``<workdir>/control-plane``, the node under
    ``<workdir>/node``, install ``kubernetes/`` and (``with_operator``) the
    operator as its ServiceAccount; stop all of it, in reverse order, at exit
    (also on an error at start: no process is left behind).
    """
    from operator_engine.devcluster.controlplane import ControlPlane
    from operator_engine.devcluster.node import ProcessNode

    assets = assets or require_assets()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    results.mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        control_plane = ControlPlane(workdir / "control-plane", assets, audit=audit)
        stack.callback(control_plane.stop)
        await asyncio.to_thread(control_plane.start)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_bytes(control_plane.admin_kubeconfig.read_bytes())
        kubeconfig.chmod(0o600)
        # The node uses the admin's credentials (see ProcessNode: a real kubelet is system:node:<name>).
        node = ProcessNode(
            control_plane.admin_kubeconfig, workdir / "node", storage_class=STORAGE_CLASS, **dict(node_options or {})
        )
        await node.start()
        stack.push_async_callback(node.stop)
        await asyncio.to_thread(install, control_plane, workdir)
        operator_kubeconfig = await asyncio.to_thread(
            control_plane.kubeconfig_for_service_account, NAMESPACE, OPERATOR_ACCOUNT, workdir / "operator.kubeconfig"
        )
        env = await asyncio.to_thread(
            operator_environment,
            control_plane,
            operator_kubeconfig,
            {"LOCAL_STORAGE_DIR": str(results), **dict(operator_env or {})},
        )
        operator: OperatorProcess | None = None
        if with_operator:
            operator = OperatorProcess(env, workdir / "operator.log")
            stack.callback(operator.stop)
            operator.start()
        yield RealStack(
            control_plane=control_plane,
            node=node,
            workdir=workdir,
            kubeconfig=kubeconfig,
            operator_kubeconfig=operator_kubeconfig,
            results=results,
            operator=operator,
            env=env,
        )


async def wait_process(operator: OperatorProcess, stop: asyncio.Event) -> None:
    """Until ``stop`` is set or the operator process ends."""
    while not stop.is_set() and operator.alive():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
