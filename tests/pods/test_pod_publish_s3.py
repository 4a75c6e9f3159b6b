"""The publish pod with an S3 target (moto's standalone server over HTTP)."""

from __future__ import annotations

import io
import tarfile
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from operator_engine.pods import publish

from .harness import S3, PodEnv


@pytest.fixture
def s3_env(pod_env: PodEnv, s3: S3) -> PodEnv:
    pod_env.write_workflow({"index": 0, "input": []}, job_id="job-s3")
    (pod_env.volume / "outputs").mkdir(parents=True)
    return pod_env


def test_uploads_a_single_output_as_is(s3_env: PodEnv, s3: S3) -> None:
    s3_env.write("outputs/result.csv", "a,b\n")

    assert publish.main([]) == 0

    assert s3.read(s3.output_bucket, "job-s3/outputs/result.csv") == b"a,b\n"
    assert s3_env.termination()["outputsUrl"] == [f"s3://{s3.output_bucket}/job-s3/outputs/result.csv"]


def test_archives_several_outputs_into_one_tar_gz(s3_env: PodEnv, s3: S3) -> None:
    s3_env.write("outputs/one.txt", "1")
    s3_env.write("outputs/two.txt", "2")

    assert publish.main([]) == 0

    archive = s3.read(s3.output_bucket, "job-s3/outputs/outputs.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["one.txt", "two.txt"]
        assert tar.extractfile("two.txt").read() == b"2"  # type: ignore[union-attr]


def test_puts_algorithm_log_in_output_bucket_and_admin_logs_in_their_bucket(s3_env: PodEnv, s3: S3) -> None:
    s3_env.write("logs/algorithm.log", "algo")
    s3_env.adminlogs.mkdir(parents=True, exist_ok=True)
    (s3_env.adminlogs / "configure.log").write_text("configure")

    assert publish.main([]) == 0

    assert s3.keys(s3.output_bucket) == ["job-s3/logs/algorithm.log"]
    assert s3.keys(s3.admin_bucket) == ["job-s3/adminlogs/configure.log", "job-s3/adminlogs/publish.log"]
    assert s3.read(s3.output_bucket, "job-s3/logs/algorithm.log") == b"algo"
    report = s3_env.termination()
    assert report["algologUrl"] == f"s3://{s3.output_bucket}/job-s3/logs/algorithm.log"
    assert report["publishlogUrl"] == f"s3://{s3.admin_bucket}/job-s3/adminlogs/publish.log"


def test_admin_logs_fall_back_to_the_output_bucket(s3_env: PodEnv, s3: S3) -> None:
    s3_env.monkeypatch.delenv("AWS_BUCKET_ADMINLOGS")

    assert publish.main([]) == 0

    assert "job-s3/adminlogs/publish.log" in s3.keys(s3.output_bucket)


def test_storage_expiry_gives_presigned_urls_that_download_the_output(s3_env: PodEnv, s3: S3) -> None:
    s3_env.set(STORAGE_EXPIRY="2")
    s3_env.write("outputs/result.csv", "presigned content")

    assert publish.main([]) == 0

    [url] = s3_env.termination()["outputsUrl"]
    assert url.startswith(s3.endpoint)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["7200"]
    assert requests.get(url, timeout=10).content == b"presigned content"


def test_storage_expiry_beyond_seven_days_is_clamped(s3_env: PodEnv, s3: S3) -> None:
    s3_env.set(STORAGE_EXPIRY="1000")
    s3_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 0

    [url] = s3_env.termination()["outputsUrl"]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["604800"]


def test_a_missing_bucket_fails_naming_it(s3_env: PodEnv, s3: S3) -> None:
    s3_env.set(AWS_BUCKET_OUTPUT="no-such-bucket")
    s3_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 1

    assert "s3://no-such-bucket/job-s3/outputs/result.csv" in s3_env.termination()["message"]


def test_the_aws_secret_never_appears_in_output_or_logs(
    s3_env: PodEnv, s3: S3, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_env.set(STORAGE_EXPIRY="1")
    s3_env.write("outputs/result.csv", "x")
    s3_env.write("logs/algorithm.log", "x")

    assert publish.main([]) == 0

    seen = capsys.readouterr()
    everything = seen.out + seen.err + s3_env.log("publish.log") + s3_env.termination_path.read_text()
    assert s3.secret_key not in everything
    assert "X-Amz-Signature" not in s3_env.log("publish.log")
