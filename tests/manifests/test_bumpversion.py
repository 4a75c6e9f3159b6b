"""bumpversion.sh, run on a temporary copy of operator_engine/__init__.py."""

import re
import subprocess

import pytest

from ._support import ROOT

SCRIPT = ROOT / "bumpversion.sh"
INIT = "operator_engine/__init__.py"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "operator_engine").mkdir()
    text = (ROOT / INIT).read_text()
    text = re.sub(r'^__version__ = "[^"]*"$', '__version__ = "1.4.7"', text, flags=re.M)
    (tmp_path / INIT).write_text(text)
    return tmp_path


def bump(cwd, *args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def version(root):
    return re.search(r'^__version__ = "([^"]*)"$', (root / INIT).read_text(), re.M).group(1)


@pytest.mark.parametrize(
    "part,expected",
    [
        ("major", "2.0.0"),
        ("minor", "1.5.0"),
        ("patch", "1.4.8"),
    ],
)
def test_bumpversion_bumps_the_requested_part(project, part, expected):
    result = bump(project, part)
    assert result.returncode == 0, result.stderr
    assert version(project) == expected
    assert "1.4.7" in result.stdout and expected in result.stdout


def test_bumpversion_leaves_the_rest_of_the_file_alone(project):
    before = (project / INIT).read_text()
    assert bump(project, "patch").returncode == 0
    assert (project / INIT).read_text() == before.replace('"1.4.7"', '"1.4.8"')


@pytest.mark.parametrize("args", [["mayor"], [], ["patch", "extra"]])
def test_bumpversion_rejects_a_bad_argument_with_exit_2(project, args):
    before = (project / INIT).read_text()
    result = bump(project, *args)
    assert result.returncode == 2
    assert "usage" in result.stderr
    assert (project / INIT).read_text() == before


def test_bumpversion_honours_project_root(project, tmp_path_factory):
    import os

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = bump(elsewhere, "minor", env={**os.environ, "PROJECT_ROOT": str(project)})
    assert result.returncode == 0, result.stderr
    assert version(project) == "1.5.0"


def test_bumpversion_script_is_strict_bash():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


def test_bumpversion_bumps_the_operator_image_tag_with_the_version(project):
    """kubernetes/operator.yml pins the operator's image to the package version (docs/SECURITY.md, item 6)."""
    (project / "kubernetes").mkdir()
    manifest = (ROOT / "kubernetes" / "operator.yml").read_text()
    from operator_engine import __version__

    assert f"oceanprotocol/operator-engine:{__version__}" in manifest
    (project / "kubernetes" / "operator.yml").write_text(manifest.replace(__version__, "1.4.7"))
    result = bump(project, "minor")
    assert result.returncode == 0, result.stderr
    bumped = (project / "kubernetes" / "operator.yml").read_text()
    tags = re.findall(r"oceanprotocol/operator-engine:([^\s\"]+)", bumped)
    assert tags and set(tags) == {"1.5.0"}
    assert bumped == manifest.replace(__version__, "1.5.0")
