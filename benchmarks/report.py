"""Runs the rows of docs/BENCHMARKS.md and writes its generated parts: the table, the goals and docs/benchmarks.png.

    .venv/bin/python benchmarks/report.py                       # every row (minutes to an hour on 2 cores)
    .venv/bin/python benchmarks/report.py --rows 1,50 --pods 0  # some rows; the others are kept from the last run
    .venv/bin/python benchmarks/report.py --render-only         # rewrite the doc and plot from docs/benchmarks.json

Each row is one ``benchmarks/transitions.py --json`` run, in a process of its
own with a deadline; its command line is printed beside its figures in the
table, so that any one figure can be measured again alone. The results are
kept in docs/benchmarks.json (one object per row, with the machine and the
commit they were measured on); the table and the goals in docs/BENCHMARKS.md
are rewritten between their ``<!-- generated:... -->`` markers, the rest of
the document is left as written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "docs" / "benchmarks.json"
PLOT = ROOT / "docs" / "benchmarks.png"

IN_FLIGHT = (1, 50, 200, 1000)
POD_SECONDS = (0.0, 0.2)
TIMEOUT = 900.0  # seconds for the workflows of one row; the process gets 5 minutes more to start and stop
#: What the original engine did between stages: poll every 5 s (every 10 s in its 2019 version).
ORIGINAL_POLL_SECONDS = (5.0, 10.0)

# The goals of the issue that asked for these benchmarks.
GOAL_TRANSITION_P50_MS = 50
GOAL_TRANSITION_P99_MS = 500
GOAL_WORKFLOWS_PER_SECOND = 20
GOAL_REQUESTS_PER_WORKFLOW = 20
GOAL_PEAK_RSS_MB = 250


def command(control_plane: str, workflows: int, pod_seconds: float | None, timeout: float) -> list[str]:
    """The transitions.py command line of one row (as printed in the table, with .venv/bin/python)."""
    argv = ["benchmarks/transitions.py", f"--workflows={workflows}", f"--timeout={timeout:g}", "--json"]
    if control_plane == "real":
        argv.insert(2, "--control-plane=real")
    else:
        argv.insert(2, f"--pod-seconds={pod_seconds:g}")
    return argv


def row_key(control_plane: str, workflows: int, pod_seconds: float | None) -> str:
    return f"{control_plane}:{'-' if pod_seconds is None else f'{pod_seconds:g}'}:{workflows}"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # docs/ is what this script writes: changes there do not change what is measured.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"], cwd=ROOT, capture_output=True
    )
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commit": commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_row(control_plane: str, workflows: int, pod_seconds: float | None, timeout: float) -> dict[str, Any]:
    """One transitions.py run; on a crash or the outer deadline, a row that says so."""
    argv = command(control_plane, workflows, pod_seconds, timeout)
    print(f"running: .venv/bin/python {' '.join(argv)}", file=sys.stderr, flush=True)
    row: dict[str, Any] = {"command": ".venv/bin/python " + " ".join(argv), "machine": machine()}
    try:
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout + 300)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"no result within {timeout + 300:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return {**row, "error": f"exit {done.returncode}: {tail}"}
    return {**row, **json.loads(lines[-1])}


def number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def pods_label(pod_seconds: float | None) -> str:
    if pod_seconds is None:
        return "real pod programs"
    return "instant" if pod_seconds == 0 else f"{pod_seconds:g} s"


def table(results: dict[str, dict[str, Any]]) -> str:
    header = (
        "| pods | in flight | completed | admission p50 / p95 / p99 (ms) | transition p50 / p95 / p99 (ms) "
        "| workflows/s | API requests per workflow (+ Events) | operator peak RSS (MB) | load average at start "
        "| command |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for key in sorted(results, key=_order):
        r = results[key]
        pods = pods_label(r.get("pod_seconds") if "pod_seconds" in r else _pods_of(key))
        control = "" if key.startswith("embedded:") else " (real control plane)"
        if "error" in r:
            rows.append(
                f"| {pods}{control} | {key.rsplit(':', 1)[1]} | failed: {r['error']} | | | | | | | `{r['command']}` |"
            )
            continue
        completed = f"{r['completed']}/{r['workflows']}" + (" (timed out)" if r["timed_out"] else "")
        rows.append(
            f"| {pods}{control} | {r['workflows']:,} | {completed} "
            f"| {number(r['admission_p50_ms'])} / {number(r['admission_p95_ms'])} / {number(r['admission_p99_ms'])} "
            f"| {number(r['transition_p50_ms'])} / {number(r['transition_p95_ms'])} "
            f"/ {number(r['transition_p99_ms'])} "
            f"| {number(r['workflows_per_second'], 2)} "
            f"| {number(r['api_requests_per_workflow'], 1)} (+ {number(r['event_requests_per_workflow'], 1)}) "
            f"| {number(r['peak_rss_mb'])} | {number(r['machine']['load_average'][0], 1)} | `{r['command']}` |"
        )
    for poll in ORIGINAL_POLL_SECONDS:
        # A poll every P seconds finds a finished pod between 0 and P seconds after its end:
        # uniformly, so the median wait is P/2 and the 99th percentile 0.99 P (plus the poll's own work).
        rows.append(
            f"| original engine, a poll every {poll:g} s{' (2019)' if poll == 10 else ''} | – | – | – "
            f"| ≈ {number(poll * 500)} / {number(poll * 950)} / {number(poll * 990)} (from the poll interval) "
            "| – | – | – | – | – |"
        )
    return header + "\n".join(rows) + "\n"


def _pods_of(key: str) -> float | None:
    value = key.split(":")[1]
    return None if value == "-" else float(value)


def _order(key: str) -> tuple[int, float, int]:
    control, pods, workflows = key.split(":")
    return (0 if control == "embedded" else 1, -1.0 if pods == "-" else float(pods), int(workflows))


def goals(results: dict[str, dict[str, Any]]) -> str:
    """Each goal of the issue, reached or missed, from the embedded rows."""
    ok = {k: r for k, r in results.items() if k.startswith("embedded:") and "error" not in r}
    lines = ["| goal | measured | |", "|---|---|---|"]

    def verdict(reached: bool | None) -> str:
        return "not measured" if reached is None else ("**reached**" if reached else "**missed**")

    for key in (row_key("embedded", 200, 0.2), row_key("embedded", 200, 0.0)):
        r = ok.get(key)
        p50, p99 = (r["transition_p50_ms"], r["transition_p99_ms"]) if r else (None, None)
        reached = (
            None if p50 is None or p99 is None else p50 <= GOAL_TRANSITION_P50_MS and p99 <= GOAL_TRANSITION_P99_MS
        )
        lines.append(
            f"| at 200 in flight ({pods_label(_pods_of(key))} pods): transition p50 ≤ {GOAL_TRANSITION_P50_MS} ms "
            f"and p99 ≤ {GOAL_TRANSITION_P99_MS} ms | p50 {number(p50)} ms, p99 {number(p99)} ms | {verdict(reached)} |"
        )
    # Throughput, row by row: one workflow in flight measures its latency, not a rate the operator can keep.
    instant = sorted(
        (r for k, r in ok.items() if _pods_of(k) == 0.0 and r["workflows"] > 1), key=lambda r: r["workflows"]
    )
    reached_at = [r["workflows"] for r in instant if r["workflows_per_second"] >= GOAL_WORKFLOWS_PER_SECOND]
    missed_at = [r["workflows"] for r in instant if r["workflows_per_second"] < GOAL_WORKFLOWS_PER_SECOND]
    if not instant:
        throughput_verdict = verdict(None)
    elif not missed_at or not reached_at:
        throughput_verdict = verdict(not missed_at)
    else:
        throughput_verdict = (
            f"**reached** at {', '.join(f'{n:,}' for n in reached_at)} in flight; "
            f"**missed** at {', '.join(f'{n:,}' for n in missed_at)}"
        )
    lines.append(
        f"| ≥ {GOAL_WORKFLOWS_PER_SECOND} workflows/s with instant pods | "
        + (
            ", ".join(f"{number(r['workflows_per_second'], 2)} at {r['workflows']:,} in flight" for r in instant)
            if instant
            else "–"
        )
        + f" | {throughput_verdict} |"
    )
    worst = max(ok.values(), key=lambda r: r["api_requests_per_workflow"], default=None)
    lowest = min(ok.values(), key=lambda r: r["api_requests_per_workflow"], default=None)
    lines.append(
        f"| ≤ {GOAL_REQUESTS_PER_WORKFLOW} API requests per workflow outside Events and watches | "
        + (
            f"{number(lowest['api_requests_per_workflow'], 1)} to {number(worst['api_requests_per_workflow'], 1)}"
            if worst and lowest
            else "–"
        )
        + f" | {verdict(None if worst is None else worst['api_requests_per_workflow'] <= GOAL_REQUESTS_PER_WORKFLOW)} |"
    )
    for key in (row_key("embedded", 1000, 0.2), row_key("embedded", 1000, 0.0)):
        r = ok.get(key)
        rss, complete = (r["peak_rss_mb"], r["completed"] == r["workflows"]) if r else (None, False)
        # A peak above the goal misses it even if the run did not complete; one below it counts only if it did.
        reached = None if rss is None or (rss <= GOAL_PEAK_RSS_MB and not complete) else rss <= GOAL_PEAK_RSS_MB
        lines.append(
            f"| ≤ {GOAL_PEAK_RSS_MB} MB operator peak RSS at 1,000 in flight ({pods_label(_pods_of(key))} pods) | "
            + ("–" if rss is None else f"{number(rss)} MB" + ("" if complete else f" ({r['completed']:,} completed)"))
            + f" | {verdict(reached)} |"
        )
    return "\n".join(lines) + "\n"


def breakdown(results: dict[str, dict[str, Any]], workflows: int = 200) -> str:
    """API requests per workflow by verb and resource, for the rows at ``workflows`` in flight."""
    keys = [k for k in sorted(results, key=_order) if k.endswith(f":{workflows}") and "error" not in results[k]]
    if not keys:
        return "Not measured yet.\n"
    kinds = sorted({kind for k in keys for kind in results[k]["requests_by_verb_and_resource"]})
    heads = [
        pods_label(results[k]["pod_seconds"]) + (" pods" if results[k]["pod_seconds"] is not None else "") for k in keys
    ]
    lines = ["| verb resource | " + " | ".join(heads) + " |", "|---" * (len(keys) + 1) + "|"]
    for kind in kinds:
        cells = [
            number(results[k]["requests_by_verb_and_resource"].get(kind, 0) / max(results[k]["completed"], 1), 2)
            for k in keys
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append(
        "| watch streams opened (in all, not per workflow) | "
        + " | ".join(str(results[k]["watch_streams"]) for k in keys)
        + " |"
    )
    return "\n".join(lines) + "\n"


def measured_on(results: dict[str, dict[str, Any]]) -> str:
    machines = {json.dumps(r["machine"]["cpu"]): r["machine"] for r in results.values() if "machine" in r}
    commits = sorted({r["machine"]["commit"] for r in results.values() if "machine" in r})
    dates = sorted(r["machine"]["date"] for r in results.values() if "machine" in r)
    pythons = sorted({r["machine"]["python"] for r in results.values() if "machine" in r})
    cpus = "; ".join(f"{m['cpu']}, nproc {m['nproc']}" for m in machines.values())
    return (
        f"Measured {dates[0]} to {dates[-1]} on commit {', '.join(commits)}: {cpus}; Python {', '.join(pythons)}. "
        "The machine is shared: the table gives the load average at each row's start.\n"
        if dates
        else "Not measured yet.\n"
    )


def replace_between(text: str, name: str, content: str) -> str:
    start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{DOC}: the markers {start} ... {end} are missing")
    return pattern.sub(lambda _: f"{start}\n{content}{end}", text)


def plot(results: dict[str, dict[str, Any]]) -> None:
    """Latency (transition p50/p99, admission p50) and throughput against workflows in flight, per pod length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pods, colour in zip(POD_SECONDS, ("tab:blue", "tab:orange"), strict=True):
        rows = sorted(
            (r for k, r in results.items() if k.startswith("embedded:") and _pods_of(k) == pods and "error" not in r),
            key=lambda r: r["workflows"],
        )
        if not rows:
            continue
        x = [r["workflows"] for r in rows]
        label = pods_label(pods) + " pods"
        latency.plot(x, [r["transition_p50_ms"] for r in rows], "o-", color=colour, label=f"{label}: transition p50")
        latency.plot(x, [r["transition_p99_ms"] for r in rows], "o--", color=colour, label=f"{label}: transition p99")
        latency.plot(x, [r["admission_p50_ms"] for r in rows], "s:", color=colour, label=f"{label}: admission p50")
        throughput.plot(x, [r["workflows_per_second"] for r in rows], "o-", color=colour, label=label)
    real = sorted(
        (r for k, r in results.items() if k.startswith("real:") and "error" not in r), key=lambda r: r["workflows"]
    )
    if real:  # the real control plane, with the real pod programs
        x = [r["workflows"] for r in real]
        label = "real control plane"
        latency.plot(
            x, [r["transition_p50_ms"] for r in real], "o-", color="tab:green", label=f"{label}: transition p50"
        )
        latency.plot(
            x, [r["transition_p99_ms"] for r in real], "o--", color="tab:green", label=f"{label}: transition p99"
        )
        latency.plot(x, [r["admission_p50_ms"] for r in real], "s:", color="tab:green", label=f"{label}: admission p50")
        throughput.plot(x, [r["workflows_per_second"] for r in real], "o-", color="tab:green", label=label)
    latency.axhline(5000, color="grey", linewidth=1)
    latency.text(
        1, 5000, " original engine: a poll every 5 s (its longest wait)", va="bottom", fontsize=8, color="grey"
    )
    latency.set(xscale="log", yscale="log", xlabel="workflows in flight", ylabel="ms", title="latency")
    throughput.axhline(GOAL_WORKFLOWS_PER_SECOND, color="grey", linewidth=1)
    throughput.text(1, GOAL_WORKFLOWS_PER_SECOND, " goal (instant pods)", va="bottom", fontsize=8, color="grey")
    throughput.set(xscale="log", xlabel="workflows in flight", ylabel="workflows completed per second")
    throughput.set_title("throughput")
    latency.legend(fontsize=7, loc="lower right")
    throughput.legend(fontsize=7)
    for axes in (latency, throughput):
        axes.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)


def render(results: dict[str, dict[str, Any]]) -> None:
    text = DOC.read_text(encoding="utf-8")
    text = replace_between(text, "measured-on", measured_on(results))
    text = replace_between(text, "table", table(results))
    text = replace_between(text, "goals", goals(results))
    text = replace_between(text, "breakdown", breakdown(results))
    DOC.write_text(text, encoding="utf-8")
    plot(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(map(str, IN_FLIGHT)), help="workflows in flight, comma-separated")
    parser.add_argument("--pods", default=",".join(f"{p:g}" for p in POD_SECONDS), help="pod seconds, comma-separated")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds for the workflows of one row")
    parser.add_argument(
        "--real", default="", help="also on the real control plane, at these workflows in flight (e.g. 20,50)"
    )
    parser.add_argument("--render-only", action="store_true", help="run nothing: rewrite from docs/benchmarks.json")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.render_only:
        runs = [
            ("embedded", int(n), float(p)) for p in args.pods.split(",") if p for n in args.rows.split(",") if n
        ] + [("real", int(n), None) for n in args.real.split(",") if n]
        for control_plane, workflows, pods in runs:
            results[row_key(control_plane, workflows, pods)] = run_row(control_plane, workflows, pods, args.timeout)
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")  # kept after every row
            render(results)
    render(results)


if __name__ == "__main__":
    main()
