"""
The real-control-plane tier: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, one per session.

Every test under this folder gets the ``realcluster`` marker. The binaries come
from ``KUBEBUILDER_ASSETS`` or from the cache that ``scripts/control-plane.sh``
builds (docs/TESTING.md). Without them the tests are skipped, except in CI
(``CI`` set), where missing binaries are a failure: CI must have run the script.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config
from kubernetes.client.rest import ApiException

from operator_engine.demo import serve_demo_data
from operator_engine.devcluster.controlplane import ControlPlane, find_assets
from operator_engine.devcluster.node import ProcessNode
from operator_engine.devcluster.realstack import (
    OPERATOR_ACCOUNT,
    STORAGE_CLASS,
    OperatorProcess,
    install,
    operator_environment,
)

from .support import (
    GROUP,
    NS,
    PLURAL,
    VERSION,
    AuditLog,
    Cluster,
    History,
    operator_test_support,
    wait_until,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.realcluster)


@pytest.fixture(scope="session")
def control_plane_assets() -> Path:
    """The folder with etcd, kube-apiserver, ... and kubectl; skips (fails in CI) when there is none."""
    assets = find_assets()
    if assets is None:
        message = "no control-plane binaries: run scripts/control-plane.sh or set KUBEBUILDER_ASSETS (docs/TESTING.md)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return assets


@pytest.fixture(scope="session")
def control_plane(control_plane_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One running control plane for the whole session, with the audit log on."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), control_plane_assets)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


# The process node, kubernetes/ installed, the demo data server, and the operator as its ServiceAccount.

operator_helpers, operator_conftest = operator_test_support()


class BackgroundLoop:
    """An event loop in a daemon thread: the session's ProcessNode and data server live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="realcluster-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@dataclasses.dataclass
class RealCluster:
    """The session's control plane with the node, ``kubernetes/`` installed, the data server and the recorders."""

    control_plane: Any
    node: ProcessNode
    kube: Cluster
    history: History
    audit: AuditLog
    data_url: str
    operator_kubeconfig: Path
    workdir: Path


@pytest.fixture(scope="session")
def real(control_plane: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """The process node registered, ``kubernetes/`` applied with kubectl, the demo data served."""
    workdir = tmp_path_factory.mktemp("realcluster")
    background = BackgroundLoop()
    stack = contextlib.AsyncExitStack()
    # Room for maxJobs workflows at once (each algorithm pod asks nCPU=1, ramGB=1 of the ConfigMap).
    node = ProcessNode(
        control_plane.admin_kubeconfig,
        workdir / "node",
        storage_class=STORAGE_CLASS,
        cpu="16",
        memory="64Gi",
        max_grace=10.0,
    )
    background.run(node.start())
    history: History | None = None
    try:
        data_url = background.run(stack.enter_async_context(serve_demo_data(0)))
        install(control_plane, workdir)
        operator_kubeconfig = control_plane.kubeconfig_for_service_account(
            NS, OPERATOR_ACCOUNT, workdir / "operator.kubeconfig"
        )
        history = History(config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig)))
        history.start()
        assert control_plane.audit_log is not None, "the realcluster tier needs the audit log"
        yield RealCluster(
            control_plane,
            node,
            Cluster(control_plane, history),
            history,
            AuditLog(control_plane.audit_log),
            data_url,
            operator_kubeconfig,
            workdir,
        )
    finally:
        if history is not None:
            history.stop()
        background.run(stack.aclose())
        background.run(node.stop())
        background.close()


class RealOperator(OperatorProcess):
    """The operator process as its ServiceAccount; started when its watch on Workflows reached the API server."""

    def __init__(self, real: RealCluster, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.real = real

    def start_and_wait(self, timeout: float = 90.0) -> None:
        since = self.real.audit.lines()
        self.start()

        def watching() -> bool:
            if not self.alive():
                raise AssertionError(f"the operator exited at start:\n{self.log()[-4000:]}")
            return any(
                e.verb == "watch" and e.resource == "workflows"
                for e in self.real.audit.events(since=since, stages=("ResponseStarted", "ResponseComplete"))
            )

        wait_until(watching, timeout, "the operator to watch Workflows", lambda: self.log()[-4000:])

    def restart(self) -> None:
        self.kill()
        self.start_and_wait()


@pytest.fixture
def receiver() -> Iterator[Any]:
    """tests/operator's notification receiver (HTTP on 127.0.0.1, in a thread)."""
    server = operator_conftest.Receiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def operator(real: RealCluster, receiver: Any, tmp_path: Path) -> Iterator[Callable[..., RealOperator]]:
    """``op = operator(maxJobs='2')``: the operator as its ServiceAccount, started; killed and cleaned after."""
    started: list[RealOperator] = []
    results = tmp_path / "results"
    results.mkdir()

    def start(**overrides: Any) -> RealOperator:
        env = operator_environment(
            real.control_plane,
            real.operator_kubeconfig,
            {
                "LOCAL_STORAGE_DIR": str(results),
                "OPERATOR_PRIVATE_KEY": operator_helpers.TEST_KEY,
                "NOTIFY_START_URL": receiver.start_url,
                "NOTIFY_STOP_URL": receiver.stop_url,
                "OPERATOR_BACKSTOP_SECONDS": "30",
                "LOG_LEVEL": "INFO",
                **{k: None if v is None else str(v) for k, v in overrides.items()},
            },
        )
        proc = RealOperator(real, env, tmp_path / f"operator-{len(started)}.log")
        started.append(proc)
        proc.start_and_wait()
        return proc

    start.results = results  # type: ignore[attr-defined]
    yield start
    for proc in started:
        proc.kill()
    clean_namespace(real)


def clean_namespace(real: RealCluster) -> None:
    """Remove what a test left: Workflows (finalizers dropped: no operator runs now) and their children."""
    kube = real.kube
    for wf in kube.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]:
        name = wf["metadata"]["name"]
        with contextlib.suppress(ApiException):
            kube.custom.patch_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, name, {"metadata": {"finalizers": None}}
            )
        kube.delete_workflow(name)
    selector = "app.kubernetes.io/managed-by=operator-engine"
    for job in kube.batch.list_namespaced_job(NS, label_selector=selector).items:
        with contextlib.suppress(ApiException):
            kube.batch.delete_namespaced_job(job.metadata.name, NS, propagation_policy="Background")
    for kind in ("config_map", "secret", "persistent_volume_claim"):
        with contextlib.suppress(ApiException):
            getattr(kube.core, f"delete_collection_namespaced_{kind}")(NS, label_selector=selector)
    wait_until(
        lambda: (
            not kube.core.list_namespaced_pod(NS, label_selector=selector).items
            and not kube.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
        ),
        120,
        "the Workflows and pods of the test to be gone",
        lambda: remaining(real),
    )


def remaining(real: RealCluster) -> str:
    """What is left in the namespace (for a failure message)."""
    kube = real.kube
    lines = [
        f"workflow {wf['metadata']['name']}: {wf['metadata'].get('finalizers')}"
        for wf in kube.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
    ]
    for pod in kube.core.list_namespaced_pod(NS).items:
        lines.append(
            f"pod {pod.metadata.name}: phase={pod.status.phase} node={pod.spec.node_name} "
            f"deleting={pod.metadata.deletion_timestamp} finalizers={pod.metadata.finalizers}"
        )
    return "\n".join(lines)
