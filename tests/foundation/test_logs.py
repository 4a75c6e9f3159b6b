"""Log lines: console text on a terminal, JSON otherwise; LOG_FORMAT and LOG_CFG as README.md's Logs section documents.

These configure logging as the operator does (``logs.setup``) and log through
the real loggers, structlog's and the standard library's (as kopf does);
tests/operator/test_logs.py runs the whole operator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_engine import config as config_module
from operator_engine import logs

from .conftest import clean_environ, run_cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup configures the whole process: put back the root logger and the loggers it touches.

    `kopf.objects` starts from no level of its own: an operator started
    in-process by an earlier test leaves it at WARNING (operator_main's startup).
    """
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    levels = {
        name: logging.getLogger(name).level
        for name in ("urllib3", "aiohttp.access", "kubernetes", "demo", "kopf.objects")
    }
    logging.getLogger("kopf.objects").setLevel(logging.NOTSET)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


class Terminal:
    """A pseudo-terminal: `stream` is what the operator would see as stderr, `read()` what a person sees."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")

    def read(self) -> str:
        self.stream.flush()
        os.set_blocking(self.master, False)
        chunks = []
        try:
            while chunk := os.read(self.master, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


class File:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream = path.open("w", encoding="utf-8")

    def read(self) -> str:
        self.stream.flush()
        return self.path.read_text(encoding="utf-8")

    def close(self) -> None:
        self.stream.close()


@pytest.fixture(params=["terminal", "file"])
def stderr(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> Iterator[Terminal | File]:
    """Not put in place here: pytest puts its own sys.stderr back between a test's setup and its call."""
    where = Terminal() if request.param == "terminal" else File(tmp_path / "stderr")
    monkeypatch.delenv("NO_COLOR", raising=False)
    yield where
    where.close()


def log_both_kinds() -> None:
    """A line of the operator's (structlog) and one of kopf's (a standard library record about a Workflow)."""
    logs.get().info("Workflow wf-a admitted", workflow="wf-a")
    ref = {"kind": "WorkFlow", "name": "wf-b", "namespace": "ns", "uid": "u", "apiVersion": "v"}
    logging.getLogger("kopf.objects").warning("Handler 'workflow_changed' failed", extra={"k8s_ref": ref})


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("log_format", [None, "json", "console"], ids=["LOG_FORMAT-unset", "json", "console"])
def test_console_lines_on_a_terminal_json_lines_otherwise_unless_log_format_says(
    log_format: str | None, stderr: Terminal | File, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr.stream)
    logs.setup("INFO", None, log_format)
    log_both_kinds()
    out = stderr.read()
    expected = log_format or ("console" if isinstance(stderr, Terminal) else "json")
    if expected == "json":
        first, second = json_lines(out)
        assert first["event"] == "Workflow wf-a admitted" and first["workflow"] == "wf-a" and first["level"] == "info"
        assert second["logger"] == "kopf.objects" and second["level"] == "warning"
        assert (second["workflow"], second["namespace"], second["name"], second["kind"]) == (
            "wf-b",
            "ns",
            "wf-b",
            "WorkFlow",
        )
    else:
        first, second = out.splitlines()
        assert not first.startswith("{")
        assert "[info" in first and "Workflow wf-a admitted" in first and "workflow=wf-a" in first
        assert "[warning" in second and "[kopf.objects]" in second and "workflow=wf-b" in second


@pytest.fixture
def json_to_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> File:
    out = File(tmp_path / "stderr")
    monkeypatch.setattr(sys, "stderr", out.stream)
    logs.setup("DEBUG", None, "json")
    return out


def test_kopf_lines_about_a_stage_job_name_its_workflow_and_stage(json_to_file: File) -> None:
    ref = {"kind": "Job", "name": "wf-c-algorithm-job", "namespace": "ns"}
    logging.getLogger("kopf.objects").info("Handler 'job_changed' succeeded.", extra={"k8s_ref": ref})
    logging.getLogger("kopf.objects").info("a Job of someone else", extra={"k8s_ref": {"kind": "Job", "name": "x"}})
    about_stage, other = json_lines(json_to_file.read())
    assert (about_stage["workflow"], about_stage["stage"], about_stage["name"]) == (
        "wf-c",
        "algorithm",
        "wf-c-algorithm-job",
    )
    assert "workflow" not in other and "stage" not in other


async def test_bound_fields_reach_every_line_of_the_task_and_its_threads_and_go_away_after(json_to_file: File) -> None:
    with logs.bound(workflow="wf-d"):
        logs.bind(stage="configure")
        logs.get().info("own line")
        # The Kubernetes client runs in a thread (asyncio.to_thread copies the context).
        await asyncio.to_thread(logging.getLogger("urllib3.connectionpool").warning, "a library's line")
        with logs.bound(workflow="wf-e"):
            logs.get().info("nested")
        logs.get().info("back")
    logs.get().info("after")
    lines = {
        e["event"]: (e.get("workflow"), e.get("stage"))
        for e in json_lines(json_to_file.read())
        if e["logger"] != "asyncio"
    }
    assert lines == {
        "own line": ("wf-d", "configure"),
        "a library's line": ("wf-d", "configure"),
        "nested": ("wf-e", None),
        "back": ("wf-d", "configure"),
        "after": (None, None),
    }


def test_secret_fields_are_redacted_and_tracebacks_carry_no_local_variables(json_to_file: File) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logs.get().exception("failed", secret="redact-me-0193", private_key="redact-me-0193")
    logging.getLogger("demo").debug("debug from the standard library")
    out = json_to_file.read()
    assert "redact-me-0193" not in out, out
    failed, debug = json_lines(out)
    assert failed["secret"] == "***" and "ValueError: boom" in failed["exception"]
    assert debug["level"] == "debug"


def test_log_level_sets_the_lowest_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    out = File(tmp_path / "stderr")
    monkeypatch.setattr(sys, "stderr", out.stream)
    logs.setup("WARNING", None, "json")
    logs.get().info("not shown")
    logging.getLogger("kopf.objects").info("not shown either")
    logs.get().warning("shown")
    assert [e["event"] for e in json_lines(out.read())] == ["shown"]


def test_a_log_cfg_file_decides_handlers_with_our_formatter_and_keeps_loggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    early = logging.getLogger("demo.created-before")  # dictConfig's default would disable it
    out = File(tmp_path / "stderr")
    monkeypatch.setattr(sys, "stderr", out.stream)
    target = tmp_path / "operator.log"
    path = tmp_path / "logging.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "formatters": {
                    "json": {"()": "operator_engine.logs.json_formatter"},
                    "console": {"()": "operator_engine.logs.console_formatter"},
                },
                "handlers": {
                    "file": {"class": "logging.FileHandler", "filename": str(target), "formatter": "json"},
                    "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "console"},
                },
                "root": {"handlers": ["file", "stderr"]},
            }
        )
    )
    logs.setup("INFO", str(path), "json")
    with logs.bound(workflow="wf-f"):
        logs.get().info("from the operator")
        early.warning("from a library")
    logs.get().debug("below LOG_LEVEL, which the file leaves as it is")
    for handler in logging.getLogger().handlers:
        handler.flush()
    in_file = json_lines(target.read_text())
    assert [(e["event"], e["workflow"]) for e in in_file] == [("from the operator", "wf-f"), ("from a library", "wf-f")]
    console = out.read().splitlines()
    assert len(console) == 2 and "from a library" in console[1] and "workflow=wf-f" in console[1]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[1, 2]", "must hold a logging.config.dictConfig mapping"),
        ("version: 1\nhandlers: [\n", "must be a readable YAML file"),
    ],
)
def test_a_log_cfg_that_is_not_a_logging_configuration_is_refused_at_start(
    content: str, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "logging.yaml"
    path.write_text(content)
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load({"LOG_CFG": str(path)})
    assert caught.value.problems[0].startswith("LOG_CFG=") and problem in caught.value.problems[0]


def test_a_log_cfg_that_dictconfig_refuses_stops_the_operator_naming_it(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "logging.yaml"
    path.write_text(
        yaml.safe_dump({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}, "root": {"handlers": ["h"]}})
    )
    with pytest.raises(config_module.ConfigError) as caught:
        logs.setup("INFO", str(path), "json")
    assert caught.value.problems[0].startswith(f"LOG_CFG='{path}'")


@pytest.mark.parametrize(
    "variable, value", [("LOG_FORMAT", "yaml"), ("LOG_CFG", "/nonexistent.yaml"), ("LOG_CFG", "refused-by-dictconfig")]
)
def test_the_operator_does_not_start_with_a_bad_logging_variable(variable: str, value: str, tmp_path: Path) -> None:
    if value == "refused-by-dictconfig":
        value = str(tmp_path / "logging.yaml")
        Path(value).write_text("version: 1\nhandlers: {h: {class: no.such.Handler}}\nroot: {handlers: [h]}\n")
    env = clean_environ(**{variable: value})
    cli = run_cli("run", env=env)
    # The Deployment's command: kopf imports the operator, which checks its configuration first.
    kopf = subprocess.run(
        [sys.executable, "-m", "kopf", "run", "--standalone", "-m", "operator_engine.operator_main"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    for result in (cli, kopf):
        assert result.returncode == 78, result.stderr[-2000:]
        assert f"{variable}=" in result.stderr and "Traceback" not in result.stderr


def test_the_readme_log_cfg_example_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"```yaml\n(version: 1\n.*?)```", readme, re.S)
    assert example, "the README shows no LOG_CFG example"
    target = tmp_path / "operator.log"
    path = tmp_path / "logging.yaml"
    path.write_text(example.group(1).replace("/var/log/operator/operator.log", str(target)))
    config_module.load({"LOG_CFG": str(path)})  # the start-up check accepts it
    out = File(tmp_path / "stderr")
    monkeypatch.setattr(sys, "stderr", out.stream)
    logs.setup("INFO", str(path), None)
    with logs.bound(workflow="wf-g", stage="queue"):
        logs.get().info("Workflow wf-g queued")
    logging.getLogger("kopf.objects").info("below the file's level for kopf")
    for handler in logging.getLogger().handlers:
        handler.flush()
    for text in (out.read(), target.read_text()):
        (line,) = json_lines(text)
        assert (line["event"], line["workflow"], line["stage"]) == ("Workflow wf-g queued", "wf-g", "queue")
