"""docs/SECURITY.md §6: the Deployment's probes hit an endpoint that its own command serves.

The operator container's command from kubernetes/operator.yml runs (listening
on loopback instead of 0.0.0.0, with the namespace filled in) against the
embedded cluster, with the Deployment's settings (leader election on), and
the path and port of its liveness probe (kopf's) and of its readiness probe
(the operator's own, READINESS_ENDPOINT) answer 200 once it runs and, being
the only replica, leads. tests/operator/test_leader_election.py checks that
the standby answers 503.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from operator_engine import config as config_module
from operator_engine.devcluster import EmbeddedCluster

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ocean-compute"


def deployment_container() -> dict:
    deployment = next(
        d
        for d in yaml.safe_load_all((ROOT / "kubernetes" / "operator.yml").read_text())
        if d and d["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_probes_of_the_deployment_are_answered_by_its_command(tmp_path):
    container = deployment_container()
    ports = {container[probe]["httpGet"]["port"]: free_port() for probe in ("livenessProbe", "readinessProbe")}

    def on_loopback(text: str) -> str:
        for port, local in ports.items():
            text = text.replace(f"http://0.0.0.0:{port}/", f"http://127.0.0.1:{local}/")
        return text

    command = [on_loopback(arg.replace("$(OPERATOR_NAMESPACE)", NAMESPACE)) for arg in container["command"]]
    live_port = ports[container["livenessProbe"]["httpGet"]["port"]]
    assert command[0] == "kopf" and any(a.startswith(f"--liveness=http://127.0.0.1:{live_port}/") for a in command)
    env = {k: v for k, v in os.environ.items() if k not in config_module.VARIABLE_NAMES}
    # The Deployment's own settings (leader election on, the readiness endpoint), on loopback.
    env.update({e["name"]: on_loopback(e["value"]) for e in container["env"] if "value" in e})
    assert env["READINESS_ENDPOINT"].startswith("http://127.0.0.1:"), env["READINESS_ENDPOINT"]
    with EmbeddedCluster.start_in_thread(NAMESPACE) as cluster:
        env["KUBECONFIG"] = str(cluster.write_kubeconfig(tmp_path / "kubeconfig"))
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "operator.log").open("wb"),
        )
        try:
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
            answered = {}
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None and len(answered) < 2:
                for probe in ("livenessProbe", "readinessProbe"):
                    get = container[probe]["httpGet"]
                    try:
                        with direct.open(f"http://127.0.0.1:{ports[get['port']]}{get['path']}", timeout=5) as reply:
                            answered[probe] = reply.status
                    except OSError:  # not listening yet, or not ready (503) yet
                        time.sleep(0.2)  # poll again, until the deadline
            log = (tmp_path / "operator.log").read_text(errors="replace")[-3000:]
            assert answered == {"livenessProbe": 200, "readinessProbe": 200}, log
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
