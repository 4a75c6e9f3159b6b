"""The publish pod with a local folder target, and behaviour common to all targets."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from operator_engine.pods import publish

from .harness import PodEnv


def file_of(url: str) -> Path:
    assert url.startswith("file:///")
    return Path(url2pathname(urlsplit(url).path))


@pytest.fixture
def local_env(pod_env: PodEnv, tmp_path: Path) -> PodEnv:
    pod_env.set(LOCAL_STORAGE_DIR=str(tmp_path / "storage"))
    pod_env.write_workflow({"index": 0, "input": [], "algorithm": {}}, job_id="job-7")
    (pod_env.volume / "outputs").mkdir(parents=True)
    return pod_env


def test_copies_a_single_output_as_is_and_returns_file_uri(local_env: PodEnv, tmp_path: Path) -> None:
    local_env.write("outputs/result.csv", "a,b\n1,2\n")

    assert publish.main([]) == 0

    [url] = local_env.termination()["outputsUrl"]
    assert file_of(url) == tmp_path / "storage" / "job-7" / "outputs" / "result.csv"
    assert file_of(url).read_text() == "a,b\n1,2\n"


def test_archives_several_outputs_into_one_tar_gz(local_env: PodEnv) -> None:
    local_env.write("outputs/one.txt", "1")
    local_env.write("outputs/sub/two.txt", "2")

    assert publish.main([]) == 0

    [url] = local_env.termination()["outputsUrl"]
    assert url.endswith("/outputs.tar.gz")
    with tarfile.open(file_of(url)) as tar:
        assert tar.extractfile("one.txt").read() == b"1"  # type: ignore[union-attr]
        assert tar.extractfile("sub/two.txt").read() == b"2"  # type: ignore[union-attr]


def test_no_outputs_gives_an_empty_list(local_env: PodEnv) -> None:
    assert publish.main([]) == 0

    assert local_env.termination()["outputsUrl"] == []


def test_withheld_outputs_are_not_uploaded_but_logs_are(local_env: PodEnv, tmp_path: Path) -> None:
    local_env.write("outputs/result.csv", "secret rows")
    local_env.write("logs/algorithm.log", "ran\n")
    local_env.set(PUBLISH_OUTPUTS="false")

    assert publish.main([]) == 0

    result = local_env.termination()
    assert result["outputsUrl"] == []
    assert file_of(result["algologUrl"]).read_text() == "ran\n"
    assert not (tmp_path / "storage" / "job-7" / "outputs").exists()


def test_uploads_algorithm_log_and_admin_logs(local_env: PodEnv) -> None:
    local_env.write("logs/algorithm.log", "algo says hi")
    local_env.adminlogs.mkdir(parents=True, exist_ok=True)
    (local_env.adminlogs / "configure.log").write_text("configure says hi")

    assert publish.main([]) == 0

    report = local_env.termination()
    assert file_of(report["algologUrl"]).read_text() == "algo says hi"
    assert file_of(report["algologUrl"]).parent.name == "logs"
    assert file_of(report["configlogUrl"]).read_text() == "configure says hi"
    assert file_of(report["configlogUrl"]).parent.name == "adminlogs"


def test_missing_logs_give_null_urls(local_env: PodEnv) -> None:
    assert publish.main([]) == 0

    report = local_env.termination()
    assert report["algologUrl"] is None
    assert report["configlogUrl"] is None


def test_publish_log_is_uploaded_last_with_its_final_line(local_env: PodEnv) -> None:
    local_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 0

    uploaded = file_of(local_env.termination()["publishlogUrl"]).read_text()
    assert "uploaded 'result.csv'" in uploaded
    assert uploaded.rstrip().endswith("uploading publish.log, the last step")


def test_a_linked_output_is_skipped_not_followed(local_env: PodEnv, tmp_path: Path) -> None:
    secret_file = tmp_path / "publish-pod-secret"
    secret_file.write_text("credentials")
    os.symlink(secret_file, local_env.volume / "outputs" / "leak")

    assert publish.main([]) == 0

    [url] = local_env.termination()["outputsUrl"]
    with tarfile.open(file_of(url)) as tar:
        assert tar.getnames() == []
    assert b"credentials" not in file_of(url).read_bytes()
    assert "skipped 'leak': a symbolic link" in local_env.log("publish.log")


def test_a_linked_outputs_folder_is_refused(local_env: PodEnv, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_text("credentials")
    (local_env.volume / "outputs").rmdir()
    os.symlink(elsewhere, local_env.volume / "outputs")

    assert publish.main([]) == 1

    assert "outputs" in local_env.termination()["message"]
    assert not (tmp_path / "storage" / "job-7" / "outputs").exists()


def test_a_linked_algorithm_log_is_not_uploaded(local_env: PodEnv, tmp_path: Path) -> None:
    secret_file = tmp_path / "publish-pod-secret"
    secret_file.write_text("credentials")
    (local_env.volume / "logs").mkdir()
    os.symlink(secret_file, local_env.volume / "logs" / "algorithm.log")

    assert publish.main([]) == 0

    assert local_env.termination()["algologUrl"] is None


def test_without_any_target_fails_listing_the_variables(pod_env: PodEnv) -> None:
    pod_env.write_workflow({"index": 0, "input": []})

    assert publish.main([]) == 1

    message = pod_env.termination()["message"]
    for variable in ("IPFS_OUTPUT", "AWS_BUCKET_OUTPUT", "LOCAL_STORAGE_DIR"):
        assert variable in message


def test_job_id_unsafe_as_a_folder_name_is_rejected(local_env: PodEnv) -> None:
    local_env.write_workflow({"index": 0}, job_id="../escape")

    assert publish.main([]) == 1

    assert "jobId" in local_env.termination()["message"]


def test_runs_as_a_python_module(local_env: PodEnv) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "operator_engine.pods.publish"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "outputsUrl" in local_env.termination_path.read_text()
