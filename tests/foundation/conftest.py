"""Fixtures for the foundation: the sample Workflows and a configuration built from a dict."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_engine import config as config_module

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "k8s_install" / "workflow-1.yaml"
DDO_SAMPLE = ROOT / "tests" / "fixtures" / "workflow-ddo-2019.yaml"
# A well-known test key (web3.py's documentation) and its address.
KNOWN_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KNOWN_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"


@pytest.fixture
def sample_body() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE.read_text())


@pytest.fixture
def ddo_body() -> dict[str, Any]:
    return yaml.safe_load(DDO_SAMPLE.read_text())


@pytest.fixture
def make_config() -> Callable[..., config_module.Config]:
    def make(**environ: str) -> config_module.Config:
        return config_module.load(environ)

    return make


def clean_environ(**extra: str) -> dict[str, str]:
    """The process environment without any operator variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in config_module.VARIABLE_NAMES}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "operator_engine", *args],
        capture_output=True,
        text=True,
        env=env or clean_environ(),
        input=stdin,
        cwd=ROOT,
        timeout=120,
    )


def deep_copy(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(body)
