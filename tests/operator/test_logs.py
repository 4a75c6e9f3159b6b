"""The operator's log lines: JSON, about the right workflow, at the right level, without secrets (README.md, Logs).

The real operator (``kopf run`` as a subprocess) runs one Workflow to its end
and rejects an invalid one, on the embedded cluster, once per LOG_LEVEL, with
``LOG_FORMAT=json`` and with a LOG_CFG file that routes everything through
``operator_engine.logs.json_formatter`` to stderr and to a file of its own.
Then every line it wrote (its stdout and stderr, the LOG_CFG's file):

* parses as one JSON object with a timestamp, a level and a message, and is
  written once (kopf's own handler is gone);
* if it mentions a workflow, carries it as ``workflow`` (kopf's lines about a
  Workflow or its Jobs included);
* is at LOG_LEVEL or above: no INFO line at WARNING, no DEBUG line at INFO;
* holds no secret: not spec.secret, nor the operator key, nor the storage
  credentials, plain or base64 (how a Secret's data travels).

And the lines that should be there are: the workflow's story at INFO and
DEBUG (with its stages), the rejection at WARNING, DEBUG lines at DEBUG.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ProcessFactory, Receiver, TimedRuntime
from helpers import PUBLISH_RESULT, TEST_KEY, make_workflow, stage_of, wait_terminal, wait_until_clean

from operator_engine.devcluster import EmbeddedCluster, Outcome
from operator_engine.devcluster.realstack import START_MARK  # the fixture's own line between runs

pytestmark = pytest.mark.slow

GOOD = "logs-good"
BAD = "logs-rejected"
WORKFLOW_SECRET = "logsecret-5e1c9b7a-never-log"
STORAGE = {
    "AWS_ACCESS_KEY_ID": "AKIALOGTEST3K8P1Z6Q2",
    "AWS_SECRET_ACCESS_KEY": "awssecret-logs-84b2d0c6-never-log",
    "IPFS_API_KEY": "ipfskey-logs-1f7a3e95-never-log",
    "IPFS_API_CLIENT": "ipfsclient-logs-c24d6b08-never-log",
}
SECRETS = {"spec.secret": WORKFLOW_SECRET, "OPERATOR_PRIVATE_KEY": TEST_KEY[2:], **STORAGE}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_cfg(path: Path, log_file: Path) -> Path:
    """A dictConfig file: JSON lines to stderr and to a file; the level is left to LOG_LEVEL."""
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "formatters": {"json": {"()": "operator_engine.logs.json_formatter"}},
                "handlers": {
                    "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
                    "file": {"class": "logging.FileHandler", "formatter": "json", "filename": str(log_file)},
                },
                "root": {"handlers": ["stderr", "file"]},
            }
        )
    )
    return path


def parse_lines(text: str, where: str) -> list[dict[str, Any]]:
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith(START_MARK):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where}, line {number} is not JSON: {line[:300]}") from None
        assert isinstance(entry, dict), f"{where}, line {number} is not a JSON object: {line[:300]}"
        assert {"timestamp", "level", "event", "logger"} <= entry.keys(), f"{where}, line {number}: {line[:300]}"
        lines.append(entry)
    return lines


def leaks(text: str) -> list[str]:
    found = []
    for what, value in SECRETS.items():
        for form, encoded in (("plain", value), ("base64", base64.b64encode(value.encode()).decode())):
            found += [f"{what} ({form}): {line[:240]}" for line in text.splitlines() if encoded in line][:1]
    return found


def mentioned(entry: dict[str, Any]) -> set[str]:
    text = json.dumps(entry)
    return {name for name in (GOOD, BAD) if name in text}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("setting", ["LOG_FORMAT=json", "LOG_CFG"])
async def test_every_line_is_json_names_its_workflow_respects_the_level_and_holds_no_secret(
    setting: str,
    level: str,
    operator_process: ProcessFactory,
    cluster: EmbeddedCluster,
    runtime: TimedRuntime,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    file_log = tmp_path / "log-cfg-file.log"
    env: dict[str, str] = {"LOG_LEVEL": level, **STORAGE, "IPFS_OUTPUT": "http://127.0.0.1:9"}
    if setting == "LOG_CFG":
        env["LOG_CFG"] = str(log_cfg(tmp_path / "logging.yaml", file_log))
    else:
        env["LOG_FORMAT"] = "json"
    runtime.script(f"{GOOD}-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    proc = await operator_process(**env)
    await cluster.create(make_workflow(GOOD, secret=WORKFLOW_SECRET))
    await cluster.create(
        make_workflow(
            BAD, secret=WORKFLOW_SECRET, mutate=lambda b: stage_of(b)["compute"].__setitem__("maxtime", "forever")
        )
    )
    await wait_terminal(cluster, BAD, context=lambda: proc.log()[-3000:])
    await wait_terminal(cluster, GOOD, context=lambda: proc.log()[-3000:])
    await receiver.wait("/stop", GOOD)
    await wait_until_clean(cluster, GOOD)
    await proc.stop()

    outputs = {"stdout/stderr": proc.log()}
    if setting == "LOG_CFG":
        outputs["the LOG_CFG file"] = file_log.read_text()
    entries: list[dict[str, Any]] = []
    for where, text in outputs.items():
        assert not leaks(text), f"secrets in {where}:\n" + "\n".join(leaks(text))
        parsed = parse_lines(text, where)
        twice = [e for e in parsed if parsed.count(e) > 1]  # kopf's own handler left in place would double them
        assert not twice, f"lines written twice in {where}: {twice[:2]}"
        entries += parsed
    if setting == "LOG_CFG":  # each of the file's handlers wrote every line once
        assert parse_lines(outputs["the LOG_CFG file"], "file") == parse_lines(outputs["stdout/stderr"], "stderr")

    lowest = logging.getLevelName(level)
    too_low = [e for e in entries if logging.getLevelName(e["level"].upper()) < lowest]
    assert not too_low, f"{len(too_low)} line(s) below {level}, e.g. {too_low[:3]}"
    unnamed = [e for e in entries if mentioned(e) and e.get("workflow") not in mentioned(e)]
    assert not unnamed, f"lines about a workflow without its name as `workflow`: {unnamed[:3]}"

    about = {name: [e for e in entries if e.get("workflow") == name] for name in (GOOD, BAD)}
    if level in ("DEBUG", "INFO"):
        stages = {e.get("stage") for e in about[GOOD]}
        assert {"queue", "admission", "configure", "algorithm", "publish", "finished"} <= stages, stages
        assert any(e["event"] == f"Workflow {GOOD} finished Succeeded" for e in about[GOOD]), about[GOOD]
    if level in ("DEBUG", "INFO", "WARNING"):
        assert any("rejected" in e["event"] and e["level"] == "warning" for e in about[BAD]), about[BAD]
    else:
        assert not about[BAD] and not about[GOOD], "nothing about these workflows is an error"
    if level == "DEBUG":
        assert any(e["level"] == "debug" for e in entries), "no DEBUG line at LOG_LEVEL=DEBUG"
        kopf_lines = [e for e in about[GOOD] if e["logger"].startswith("kopf")]
        assert kopf_lines, "none of kopf's lines about the Workflow or its Jobs names it"
