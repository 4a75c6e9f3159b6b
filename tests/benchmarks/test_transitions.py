"""
benchmarks/transitions.py --json runs end to end and reports numbers of the right kinds.

A benchmark, not a timing test: nothing here asserts how fast anything is,
only that a small run (the embedded API server and the operator, each a
process of its own, on loopback) completes and that every figure the
documentation's table is made of is there and is a sane number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402  (benchmarks/report.py)

WORKFLOWS = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured() -> dict:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "transitions.py"),
            f"--workflows={WORKFLOWS}",
            "--pod-seconds=0",
            "--timeout=240",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def test_every_workflow_completes_and_every_figure_is_a_sane_number(measured: dict) -> None:
    assert measured["completed"] == WORKFLOWS and not measured["timed_out"]
    assert measured["max_jobs"] == WORKFLOWS and measured["pod_seconds"] == 0
    for key in (
        "admission_p50_ms",
        "admission_p95_ms",
        "admission_p99_ms",
        "transition_p50_ms",
        "transition_p95_ms",
        "transition_p99_ms",
    ):
        value = measured[key]
        assert isinstance(value, float) and math.isfinite(value) and 0 <= value < 240_000, (key, value)
    assert measured["transition_p50_ms"] <= measured["transition_p95_ms"] <= measured["transition_p99_ms"]
    assert measured["admission_p50_ms"] <= measured["admission_p99_ms"]
    assert measured["workflows_per_second"] > 0 and 0 < measured["elapsed_s"] < 240
    assert 0 < measured["peak_rss_mb"] < 4096 and measured["operator_cpu_s"] > 0


def test_requests_are_counted_by_verb_and_resource_with_events_and_watches_apart(measured: dict) -> None:
    by_kind = measured["requests_by_verb_and_resource"]
    # Every workflow has three stages, each a Job the operator creates; its status is patched.
    assert by_kind["create jobs"] >= 3 * WORKFLOWS
    assert by_kind.get("patch workflows/status", 0) >= WORKFLOWS
    assert all(count > 0 for count in by_kind.values())
    events = sum(n for kind, n in by_kind.items() if kind.split(" ")[1] == "events")
    watches = sum(n for kind, n in by_kind.items() if kind.startswith("watch "))
    total = sum(by_kind.values())
    assert measured["api_requests_per_workflow"] == pytest.approx((total - events - watches) / WORKFLOWS, abs=0.05)
    assert measured["event_requests_per_workflow"] == pytest.approx(events / WORKFLOWS, abs=0.05)
    assert measured["watch_streams"] >= 1  # at least the operator's watch of Workflows


def test_the_report_renders_a_row_from_the_measurement(measured: dict) -> None:
    results = {report.row_key("embedded", WORKFLOWS, 0.0): {**measured, "command": "cmd", "machine": report.machine()}}
    row = next(line for line in report.table(results).splitlines() if line.startswith("| instant |"))
    assert f"| {WORKFLOWS} | {WORKFLOWS}/{WORKFLOWS} |" in row
    assert report.number(measured["transition_p50_ms"]) in row
    assert "create jobs | 3.00" in report.breakdown(results, WORKFLOWS)
