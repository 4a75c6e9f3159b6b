"""A stopped algorithm that ignores SIGTERM cannot change what is published (docs/SECURITY.md §3).

Real processes (ProcessRuntime): the algorithm ignores SIGTERM and appends
to its output every few milliseconds until the kubelet's SIGKILL at the end
of its grace period (the runtime's max_grace, 5 s). Publish must start only
after that, so the published output is exactly what the volume holds in the
end: on a pipeline that started publish at once, it was a truncated copy.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from operator_engine.demo import follow_workflow, running_stack
from operator_engine.devcluster.patches import merge_patch

from .helpers import workflow

STUBBORN = """\
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
path = os.path.join(os.environ["OUTPUTS"], "counter.txt")
i = 0
while True:
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    i += 1
    time.sleep(0.01)
"""


async def wait_for_file(root: Path, pattern: str, timeout: float = 90.0) -> Path:
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in root.glob(pattern) if p.is_file() and p.stat().st_size > 0]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {pattern} under {root} within {timeout:.0f} s"
        await asyncio.sleep(0.1)


async def test_a_stopped_algorithm_cannot_change_the_published_output(tmp_path: Path) -> None:
    name = "wf-stubborn"
    body = workflow(name, ["DATA_URL/data/uk-weather-2011.csv"], algorithm={"rawcode": STUBBORN})
    async with running_stack(tmp_path, data_port=0) as stack:
        body["spec"]["metadata"]["stages"][0]["input"][0]["url"] = [f"{stack.data_url}/data/uk-weather-2011.csv"]
        await stack.cluster.create(body)
        on_volume = await wait_for_file(tmp_path / "cluster" / "volumes", "**/outputs/counter.txt")
        stack.cluster.api.update(
            stack.cluster.spec("wf"),
            stack.cluster.namespace,
            name,
            lambda old: merge_patch(old, {"spec": {"stopRequested": True}}),
        )
        final = (await follow_workflow(stack.cluster, name, timeout=120))["status"]
    assert final["phase"] == "Stopped", final
    [url] = final["outputsUrl"]
    assert url.endswith("/counter.txt"), url
    published = (tmp_path / "results" / name / "outputs" / "counter.txt").read_text()
    print("DEBUG", len(published), on_volume.stat().st_size, published.splitlines()[-1], final.get("message"))
    assert published == on_volume.read_text(), (
        f"the algorithm wrote after publish read its output ({len(published)} bytes published, "
        f"{on_volume.stat().st_size} on the volume in the end)"
    )
