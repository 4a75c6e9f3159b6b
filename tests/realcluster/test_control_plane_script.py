"""scripts/control-plane.sh: KUBEBUILDER_ASSETS is used as given.

A failed build says where and what to do, in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from operator_engine.devcluster.controlplane import BINARIES, cache_folder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "control-plane.sh"


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False
    )


def test_kubebuilder_assets_holding_the_binaries_is_printed_and_nothing_is_built(
    control_plane_assets: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    done = run_script({"KUBEBUILDER_ASSETS": str(control_plane_assets), "XDG_CACHE_HOME": str(cache)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{control_plane_assets}\n"
    assert not cache.exists()


def test_the_built_cache_is_found_again_without_building(control_plane_assets: Path) -> None:
    if control_plane_assets != cache_folder():
        pytest.skip("the binaries come from KUBEBUILDER_ASSETS, not from the build cache")
    env = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert all((folder / name).is_file() for name in BINARIES)
    assert "go build" not in done.stderr


def test_a_failed_build_names_the_step_and_kubebuilder_assets_in_one_line(tmp_path: Path) -> None:
    """No module proxy and an empty module cache: the first Go step fails (or 'find go' where Go is missing)."""
    (tmp_path / "modules").mkdir()
    env = {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "GOMODCACHE": str(tmp_path / "modules"),
        "GOPROXY": "off",
        "GOFLAGS": "-modcacherw",
        "KUBEBUILDER_ASSETS": str(tmp_path / "empty"),
    }
    done = run_script(env)
    assert done.returncode != 0
    assert done.stdout == ""
    failures = [line for line in done.stderr.splitlines() if "build failed" in line]
    assert len(failures) == 1, done.stderr
    assert "build failed at step '" in failures[0] and "set KUBEBUILDER_ASSETS" in failures[0]
    if shutil.which("go"):
        assert "step 'download k8s.io/kubernetes" in failures[0]
