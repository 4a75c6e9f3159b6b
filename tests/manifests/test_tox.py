"""tox.ini: one py311 env running pytest with the dev requirements."""

import configparser

from ._support import ROOT


def test_tox_runs_pytest_in_py311_with_dev_requirements():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tox.ini")
    assert [e.strip() for e in cfg["tox"]["envlist"].split(",")] == ["py311"]
    env = cfg["testenv:py311"] if cfg.has_section("testenv:py311") else cfg["testenv"]
    assert "-r requirements_dev.txt" in env["deps"]
    assert env["commands"].strip() == "python -m pytest {posargs}"
    assert env.get("skip_install", "false").lower() != "true"
