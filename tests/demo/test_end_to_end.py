"""`operator-engine demo` and `operator-engine dev` as a user runs them: subprocesses, the real kubectl.

Both use port 8765 (the sample Workflow names it); they are skipped when it is taken.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from operator_engine.demo import demo_data_dir, sample_workflow_path

from .helpers import KUBECTL, port_free

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not port_free(8765), reason="port 8765 (named by the sample Workflow) is in use"),
]

CLI = [sys.executable, "-m", "operator_engine.cli"]


def expected_summary() -> dict[str, dict[str, float]]:
    """The per-station numbers, computed here independently of the shipped algorithm."""
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    with open(demo_data_dir() / "data" / "uk-weather-2011.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[r["station"]].append((float(r["tmin_c"]), float(r["tmax_c"]), float(r["rain_mm"])))
    return {
        name: {
            "days": len(v),
            "mean_c": round(sum((a + b) / 2 for a, b, _ in v) / len(v), 2),
            "min_c": min(a for a, _, _ in v),
            "max_c": max(b for _, b, _ in v),
            "rain_mm": round(sum(c for _, _, c in v), 2),
        }
        for name, v in rows.items()
    }


def test_demo_runs_the_sample_to_success_with_real_numbers(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for stage in ("20 Configuring volumes", "40 Running algorithm", "60 Publishing results", "70 Job completed"):
        assert stage in out, out
    assert "Workflow workflow-1: Succeeded" in out
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"
    # the summary printed is the one published, and its numbers are right
    summary = json.loads((tmp_path / "results" / "workflow-1" / "outputs" / "summary.json").read_text())
    assert f'"mean_c": {summary["stations"]["Aberdeen"]["mean_c"]}' in out
    assert summary["rows"] == 1095 and summary["files"] == 1
    for name, numbers in expected_summary().items():
        got = summary["stations"][name]
        for key, value in numbers.items():
            assert got[key] == pytest.approx(value, abs=0.011), (name, key)
    assert "Stop-flag" not in out and "[info" not in out  # the operator's log is not on the console
    # The demo data is on loopback, which configure refuses by default: the demo allows it, and says so.
    assert "may fetch from loopback (127.0.0.0/8,::1)" in out and "CONFIGURE_ALLOWED_NETWORKS" in out
    assert (tmp_path / "operator.log").stat().st_size > 0


@pytest.mark.skipif(not os.access(KUBECTL, os.X_OK), reason=f"{KUBECTL} is not installed")
def test_dev_serves_kubectl_until_stopped(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    log = (tmp_path / "dev.out").open("w")
    with socket.socket() as probe:  # a free port for METRICS_PORT (9100 may be taken on a shared machine)
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    dev = subprocess.Popen(
        [*CLI, "dev", "--workdir", str(tmp_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "METRICS_PORT": str(metrics_port)},
    )

    def finished(phase: str) -> float:
        """operator_engine_workflows_finished_total{phase} as Prometheus would scrape it from dev."""
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
            text = response.read().decode()
        return next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "operator_engine_workflows_finished_total" and s.labels == {"phase": phase}
        )

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )

    try:
        deadline = time.monotonic() + 60
        while not (kubeconfig.exists() and "ready" in (tmp_path / "dev.out").read_text()):
            assert dev.poll() is None, (tmp_path / "dev.out").read_text()
            assert time.monotonic() < deadline, "dev did not start"
            time.sleep(0.2)
        assert str(kubeconfig) in (tmp_path / "dev.out").read_text()
        assert "CONFIGURE_ALLOWED_NETWORKS=127.0.0.0/8,::1" in (tmp_path / "dev.out").read_text()
        assert f"http://127.0.0.1:{metrics_port}/metrics" in (tmp_path / "dev.out").read_text()
        # "ready" comes once the operator's thread is started; its startup handler (which opens
        # the metrics port) may still be running: wait for the endpoint, then read it.
        deadline = time.monotonic() + 30
        while True:
            try:
                before = finished("Succeeded")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, f"nothing listens on METRICS_PORT {metrics_port}"
                time.sleep(0.2)
        assert before == 0
        applied = kubectl("apply", "-f", str(sample_workflow_path()))
        assert applied.returncode == 0, applied.stderr
        code = ""
        deadline = time.monotonic() + 60
        while code != "70":
            assert time.monotonic() < deadline, f"statusCode stayed {code!r}"
            got = kubectl("get", "wf", "workflow-1", "-o", "jsonpath={.status.statusCode}")
            assert got.returncode == 0, got.stderr
            code = got.stdout.strip()
            time.sleep(0.5)
        table = kubectl("get", "wf")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "STATUS", "CODE", "PHASE", "AGE"]
        assert row.split()[:5] == ["workflow-1", "Job", "completed", "70", "Succeeded"]
        assert (tmp_path / "results" / "workflow-1" / "outputs" / "summary.json").exists()
        deadline = time.monotonic() + 30  # counted once the operator has its answer to the status patch
        while finished("Succeeded") != 1:
            assert time.monotonic() < deadline, 'workflows_finished_total{phase="Succeeded"} stayed 0'
            time.sleep(0.2)
    finally:
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            assert dev.wait(timeout=45) == 0
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
            log.close()
