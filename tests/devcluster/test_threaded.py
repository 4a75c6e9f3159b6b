"""The cluster in a background thread, and as `python -m operator_engine.devcluster`."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

import kubernetes
import yaml

from operator_engine.devcluster import EmbeddedCluster

from .helpers import job_manifest


def test_threaded_cluster_serves_a_synchronous_client(tmp_path: pathlib.Path) -> None:
    with EmbeddedCluster.start_in_thread() as handle:
        path = handle.write_kubeconfig(tmp_path / "kubeconfig")
        client = kubernetes.config.new_client_from_config(str(path))
        kubernetes.client.BatchV1Api(client).create_namespaced_job("ocean-compute", job_manifest("j1"))
        job = handle.call(lambda c: c.wait_for("job", "j1", lambda j: (j.get("status") or {}).get("succeeded")))
        assert job is not None and job["status"]["succeeded"] == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_module_entry_serves_until_terminated(tmp_path: pathlib.Path) -> None:
    port, path = _free_port(), tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "operator_engine.devcluster", "--port", str(port), "--kubeconfig", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"127.0.0.1:{port}" in process.stdout.readline()  # printed once serving
        config = yaml.safe_load(path.read_text())
        assert config["clusters"][0]["cluster"]["server"] == f"http://127.0.0.1:{port}"
        client = kubernetes.config.new_client_from_config(str(path))
        namespaces = kubernetes.client.CoreV1Api(client).list_namespace()
        assert "ocean-compute" in {ns.metadata.name for ns in namespaces.items}
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
