"""tox.ini: one py311 env running the checks of scripts/test.sh (ruff, the format, mypy), then pytest."""

import configparser

from ._support import ROOT


def test_tox_runs_the_checks_then_pytest_in_py311_with_dev_requirements():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tox.ini")
    assert [e.strip() for e in cfg["tox"]["envlist"].split(",")] == ["py311"]
    env = cfg["testenv:py311"] if cfg.has_section("testenv:py311") else cfg["testenv"]
    assert "-r requirements_dev.txt" in env["deps"]
    commands = [line.strip() for line in env["commands"].strip().splitlines()]
    assert commands == ["ruff check .", "ruff format --check .", "mypy", "python -m pytest {posargs}"]
    assert env.get("skip_install", "false").lower() != "true"
