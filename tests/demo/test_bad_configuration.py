"""`operator-engine demo` and `dev` with a bad configuration: one line on stderr, exit 78, nothing started.

The operator's own log lines go to ``<workdir>/operator.log``; a configuration
error must not end up only there. It is checked before the data server, the
cluster or the operator start, so nothing is left behind, not even the folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from operator_engine import config as config_module

CLI = [sys.executable, "-m", "operator_engine.cli"]


@pytest.mark.parametrize("command", ["demo", "dev"])
def test_a_bad_variable_is_named_on_stderr_before_anything_starts(command: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config_module.VARIABLE_NAMES}
    env["maxJobs"] = "many"
    workdir = tmp_path / "work"
    result = subprocess.run(
        [*CLI, command, "--workdir", str(workdir), "--data-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 78, result.stderr
    assert result.stderr.splitlines() == [
        "operator-engine: configuration error: maxJobs='many': must be an integer >= 1"
    ]
    assert result.stdout == ""
    assert not workdir.exists()
