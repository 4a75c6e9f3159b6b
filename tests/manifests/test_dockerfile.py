"""The Dockerfile (it cannot be built here, so its text is checked)."""

import re

import pytest

from ._support import ROOT

DOCKERFILE = ROOT / "Dockerfile"
KOPF_CMD = (
    'CMD ["kopf", "run", "--standalone", "--namespace=ocean-compute", '
    '"--liveness=http://0.0.0.0:8080/healthz", "-m", "operator_engine.operator_main"]'
)


def instructions():
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_based_on_python_3_11_slim():
    assert instructions()[0] == ("FROM", "python:3.11-slim")


def test_dockerfile_installs_requirements_then_the_package():
    runs = [arg for word, arg in instructions() if word == "RUN"]
    req = next(i for i, r in enumerate(runs) if "pip install --no-cache-dir -r requirements.txt" in r)
    pkg = next(i for i, r in enumerate(runs) if re.search(r"pip install --no-cache-dir \.(\s|$)", r))
    assert req < pkg


def test_dockerfile_final_user_is_non_root():
    users = [arg for word, arg in instructions() if word == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"


def test_dockerfile_creates_the_uid_10001_user():
    assert re.search(r"useradd\b.*--uid 10001", DOCKERFILE.read_text())


@pytest.mark.parametrize("word", ["KEY", "SECRET", "PASSWORD", "TOKEN"])
def test_dockerfile_env_mentions_no_credential(word):
    for instruction, arg in instructions():
        if instruction in ("ENV", "ARG"):
            assert word not in arg.upper(), arg


def test_dockerfile_runs_kopf_standalone_by_default():
    cmds = [f"CMD {arg}" for word, arg in instructions() if word == "CMD"]
    assert cmds == [KOPF_CMD]


def test_dockerfile_has_commented_dev_mode_tail_alternative():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert '# CMD ["tail", "-f", "/dev/null"]' in lines
    assert any("kopf run --standalone operator_engine/operator_main.py" in line for line in lines)


def test_dockerignore_excludes_venv_git_and_caches():
    entries = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".pytest_cache", ".tox"} <= entries


def _pinned(path, seen=None):
    """The package names a requirements file pins, following its `-r` includes."""
    seen = seen if seen is not None else set()
    names = set()
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            included = line[3:].strip()
            if included not in seen:
                seen.add(included)
                names |= _pinned(included, seen)
        elif line:
            names.add(re.split(r"[^A-Za-z0-9._-]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_the_image_installs_the_operator_without_the_embedded_cluster():
    """The [dev] extra (KMock and what only devcluster/demo use) stays out of the production image."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0].lower() for r in project["optional-dependencies"]["dev"]}
    runtime = {re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0].lower() for r in project["dependencies"]}
    assert "kmock" in extra and not extra & runtime
    runs = " ".join(arg for word, arg in instructions() if word == "RUN")
    assert "[dev]" not in runs and "requirements_dev" not in runs
    assert not extra & _pinned("requirements.txt"), "requirements.txt pins a package of the [dev] extra"
    assert extra <= _pinned("requirements_dev_extra.txt") <= _pinned("requirements_dev.txt")
