"""
`operator-engine dev --control-plane real` as a user runs it: a subprocess, the real kubectl, Ctrl-C.
A bad input (missing binaries, a bad flag) prints one line and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from operator_engine.demo import load_sample_workflow

from .support import wait_until

CLI = [sys.executable, "-m", "operator_engine.cli"]
ROOT = Path(__file__).resolve().parents[2]


def processes_under(folder: Path) -> list[str]:
    """Processes whose command line, working folder or environment mention ``folder``."""
    found = []
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in cwd or needle in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:200]}")
    return found


def test_missing_binaries_say_how_to_get_them_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "no-assets"
    empty.mkdir()
    workdir = tmp_path / "work"
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(empty), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [*CLI, "dev", "--control-plane", "real", "--workdir", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "scripts/control-plane.sh" in lines[0] and "KUBEBUILDER_ASSETS" in lines[0], lines[0]
    assert not workdir.exists(), "nothing was started, not even a folder"
    assert not processes_under(tmp_path)


def test_a_bad_flag_is_one_line_of_usage(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "dev", "--control-plane", "kind", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "argument --control-plane: invalid choice: 'kind'" in done.stderr.strip().splitlines()[-1]
    assert not processes_under(tmp_path)


@pytest.mark.slow
def test_dev_with_a_real_control_plane_runs_the_sample_and_stops_clean(
    control_plane_assets: Path, tmp_path: Path
) -> None:
    from demo.helpers import closed_port

    port = closed_port()
    workdir = tmp_path / "dev"
    out = tmp_path / "dev.out"
    log = out.open("w")
    dev = subprocess.Popen(
        [*CLI, "dev", "--control-plane", "real", "--workdir", str(workdir), "--data-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "KUBEBUILDER_ASSETS": str(control_plane_assets)},
    )
    kubeconfig = workdir / "kubeconfig"
    kubectl_path = str(control_plane_assets / "kubectl")

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl_path, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
        )

    try:
        wait_until(
            lambda: dev.poll() is not None or "ready" in out.read_text().splitlines(),
            300,
            "dev to be ready",
            lambda: out.read_text(),
        )
        assert dev.poll() is None, out.read_text()
        sample = tmp_path / "workflow-1.yaml"
        sample.write_text(yaml.safe_dump(load_sample_workflow(port)))
        applied = kubectl("apply", "-f", str(sample))
        assert applied.returncode == 0, applied.stderr
        wait_until(
            lambda: (
                kubectl("get", "wf", "workflow-1", "-n", "ocean-compute", "-o", "jsonpath={.status.phase}").stdout
                in ("Succeeded", "Failed")
            ),
            300,
            "workflow-1 to end",
            lambda: (workdir / "operator.log").read_text()[-3000:],
        )
        shown = json.loads(kubectl("get", "wf", "workflow-1", "-n", "ocean-compute", "-o", "json").stdout)
        assert shown["status"]["phase"] == "Succeeded", shown["status"]
        summary = json.loads((workdir / "results" / "workflow-1" / "outputs" / "summary.json").read_text())
        assert summary["rows"] == 1095 and "Aberdeen" in summary["stations"]
        nodes = kubectl("get", "nodes")
        assert nodes.returncode == 0 and "process-node" in nodes.stdout and " Ready" in nodes.stdout, nodes.stdout
        described = kubectl("describe", "wf", "workflow-1", "-n", "ocean-compute")
        assert described.returncode == 0 and "Succeeded" in described.stdout, described.stderr
        pods = kubectl("get", "pods", "-n", "ocean-compute")
        assert pods.returncode == 0, pods.stderr
    finally:
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            assert dev.wait(timeout=120) == 0, out.read_text()[-3000:]
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
            log.close()
    wait_until(
        lambda: not processes_under(workdir),
        30,
        "every process of dev to end",
        lambda: "\n".join(processes_under(workdir)),
    )
