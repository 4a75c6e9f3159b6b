"""The configure pod: provisions inputs, algorithm and DDOs, reports 31/32 on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from operator_engine.pods import configure

from .harness import FileServer, PodEnv, Reply

DID_A = "did:op:aaa111"
DID_B = "did:op:bbb222"
ALGO_DID = "did:op:algo333"


def stage(inputs: list[dict[str, Any]], algorithm: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "index": 0,
        "input": inputs,
        "algorithm": algorithm if algorithm is not None else {"rawcode": "print(1)"},
        "compute": {"Instances": 1, "maxtime": 3600},
        "output": {},
    }


def data_input(did: str, *urls: str, **extra: Any) -> dict[str, Any]:
    return {"index": 0, "id": did, "url": list(urls), **extra}


def run_configure(pod_env: PodEnv, the_stage: dict[str, Any]) -> int:
    pod_env.write_workflow(the_stage)
    return configure.main([])


# -- success ----------------------------------------------------------------


def test_downloads_each_input_file_to_inputs_did_index(pod_env: PodEnv, file_server: FileServer) -> None:
    inputs = [
        data_input(DID_A, file_server.serve("/a0", "a zero"), file_server.serve("/a1", "a one")),
        data_input(DID_B, file_server.serve("/b0", "b zero"), file_server.serve("/b1", "b one")),
    ]

    assert run_configure(pod_env, stage(inputs)) == 0

    folder = pod_env.volume / "inputs"
    assert (folder / DID_A / "0").read_text() == "a zero"
    assert (folder / DID_A / "1").read_text() == "a one"
    assert (folder / DID_B / "0").read_text() == "b zero"
    assert (folder / DID_B / "1").read_text() == "b one"
    assert not pod_env.termination_path.exists()


def test_downloads_algorithm_urls_to_algorithm_then_numbered_files(pod_env: PodEnv, file_server: FileServer) -> None:
    algorithm = {"id": ALGO_DID, "url": [file_server.serve("/main.py", "main"), file_server.serve("/lib.py", "lib")]}

    assert run_configure(pod_env, stage([], algorithm)) == 0

    transformations = pod_env.volume / "transformations"
    assert (transformations / "algorithm").read_text() == "main"
    assert (transformations / "1").read_text() == "lib"


def test_accepts_a_single_algorithm_url_string(pod_env: PodEnv, file_server: FileServer) -> None:
    algorithm = {"url": file_server.serve("/main.py", "main")}

    assert run_configure(pod_env, stage([], algorithm)) == 0

    assert (pod_env.volume / "transformations" / "algorithm").read_text() == "main"


def test_writes_rawcode_as_the_algorithm(pod_env: PodEnv) -> None:
    assert run_configure(pod_env, stage([], {"rawcode": "print('hello')"})) == 0

    assert (pod_env.volume / "transformations" / "algorithm").read_text() == "print('hello')"


def test_writes_given_ddos_as_json_named_by_did(pod_env: PodEnv, file_server: FileServer) -> None:
    input_ddo = {"id": DID_A, "metadata": {"name": "dataset"}}
    algo_ddo = {"id": ALGO_DID, "metadata": {"name": "algo"}}
    inputs = [data_input(DID_A, file_server.serve("/a0", "x"), ddo=input_ddo)]

    assert run_configure(pod_env, stage(inputs, {"id": ALGO_DID, "rawcode": "1", "ddo": algo_ddo})) == 0

    assert json.loads((pod_env.volume / "ddos" / DID_A).read_text()) == input_ddo
    assert json.loads((pod_env.volume / "ddos" / ALGO_DID).read_text()) == algo_ddo


def test_ddos_reach_the_algorithm_without_where_the_data_lives(pod_env: PodEnv, file_server: FileServer) -> None:
    data_url = file_server.serve("/a0", "x") + "?token=presigned-7f3a"
    input_ddo = {
        "id": DID_A,
        "service": [
            {
                "type": "Metadata",
                "attributes": {
                    "main": {
                        "name": "dataset",
                        "files": [
                            {"index": 0, "contentType": "text/csv", "url": "https://bucket.example/data.csv?sig=s3cr3t"}
                        ],
                    }
                },
                "serviceEndpoint": "https://provider.example/api",
            }
        ],
        "encryptedFiles": "0x04abcdef",
        "notes": ["copied from " + data_url, "kept"],
        "services": [{"files": "0x04encrypted", "type": "compute"}],
    }
    algorithm = {"id": ALGO_DID, "rawcode": "1", "ddo": {"id": ALGO_DID, "urls": ["https://code.example/a.py"]}}

    assert run_configure(pod_env, stage([data_input(DID_A, data_url, ddo=input_ddo)], algorithm)) == 0

    written = (pod_env.volume / "ddos" / DID_A).read_text()
    for leaked in ("bucket.example", "s3cr3t", "0x04abcdef", "0x04encrypted", "presigned-7f3a", "/a0"):
        assert leaked not in written
    assert json.loads(written) == {
        "id": DID_A,
        "service": [
            {
                "type": "Metadata",
                "attributes": {
                    "main": {
                        "name": "dataset",
                        "files": [{"index": 0, "contentType": "text/csv"}],
                    }
                },
                "serviceEndpoint": "https://provider.example/api",
            }
        ],
        "notes": ["kept"],
        "services": [{"type": "compute"}],
    }
    assert "code.example" not in (pod_env.volume / "ddos" / ALGO_DID).read_text()


def test_creates_the_folder_layout_with_writable_outputs_and_logs(pod_env: PodEnv) -> None:
    assert run_configure(pod_env, stage([])) == 0

    for name in ("inputs", "transformations", "ddos", "outputs", "logs"):
        assert (pod_env.volume / name).is_dir()
    assert (pod_env.volume / "outputs").stat().st_mode & 0o777 == 0o777
    assert (pod_env.volume / "logs").stat().st_mode & 0o777 == 0o777


def test_retries_a_503_until_it_succeeds(pod_env: PodEnv, file_server: FileServer) -> None:
    url = file_server.serve_sequence("/flaky", [Reply(503), Reply(503), Reply(200, b"finally")])

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 0

    assert file_server.hits["/flaky"] == 3
    assert (pod_env.volume / "inputs" / DID_A / "0").read_text() == "finally"


def test_gives_up_after_three_retries_of_a_persistent_503(pod_env: PodEnv, file_server: FileServer) -> None:
    url = file_server.serve("/down", "", status=503)

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 1

    assert file_server.hits["/down"] == 4
    assert "HTTP 503" in pod_env.termination()["message"]


# -- failures -----------------------------------------------------------------


def test_a_silent_server_fails_on_the_read_timeout(pod_env: PodEnv, file_server: FileServer) -> None:
    pod_env.set(CONFIGURE_TIMEOUT="0.2")
    url = file_server.serve("/slow", "late", delay=2)

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 1

    assert "read timed out after 0.2s" in pod_env.termination()["message"]


def test_unreachable_input_fails_with_31_naming_the_input(pod_env: PodEnv, closed_port_url: str) -> None:
    assert run_configure(pod_env, stage([data_input(DID_A, closed_port_url)])) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 31
    assert DID_A in report["message"]
    assert "input[0]" in report["message"]
    assert "Connection refused" in report["message"]


def test_algorithm_404_fails_with_32_naming_the_algorithm(pod_env: PodEnv, file_server: FileServer) -> None:
    algorithm = {"id": ALGO_DID, "url": [file_server.url("/missing.py")]}

    assert run_configure(pod_env, stage([], algorithm)) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 32
    assert ALGO_DID in report["message"]
    assert "HTTP 404" in report["message"]


def test_input_over_the_disk_limit_fails_with_31(pod_env: PodEnv, file_server: FileServer) -> None:
    pod_env.set(diskGB=str(1000 / 1024**3))  # 1000 bytes
    url = file_server.serve("/big", b"x" * 5000)

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 31
    assert "too large" in report["message"] and "diskGB" in report["message"]
    assert not (pod_env.volume / "inputs" / DID_A / "0").exists()


def test_disk_limit_counts_streamed_bytes_without_content_length(pod_env: PodEnv, file_server: FileServer) -> None:
    pod_env.set(diskGB=str(3000 / 1024**3))
    urls = [
        file_server.serve("/one", b"x" * 2000, content_length=False),
        file_server.serve("/two", b"y" * 2000, content_length=False),
    ]

    assert run_configure(pod_env, stage([data_input(DID_A, *urls)])) == 1

    assert "too large" in pod_env.termination()["message"]
    assert "url[1]" in pod_env.termination()["message"]


def test_non_http_scheme_fails_naming_the_scheme(pod_env: PodEnv) -> None:
    assert run_configure(pod_env, stage([data_input(DID_A, "file:///etc/passwd")])) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 31
    assert "refused: unsupported URL scheme 'file'" in report["message"]
    assert "input[0].url[0]" in report["message"]


def test_remote_input_fails_as_unsupported(pod_env: PodEnv) -> None:
    remote_input = {"index": 0, "id": DID_A, "remote": {"txId": "0x1", "serviceId": "0"}}

    assert run_configure(pod_env, stage([remote_input])) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 31
    assert "remote" in report["message"] and "not support" in report["message"]


@pytest.mark.parametrize("did", ["did:op:../../etc", "did:op:a/b", "not-a-did"])
def test_input_did_unsafe_as_a_folder_name_is_rejected(pod_env: PodEnv, did: str) -> None:
    assert run_configure(pod_env, stage([data_input(did, "http://127.0.0.1:9/x")])) == 1

    assert pod_env.termination()["statusCode"] == 31
    assert "input[0].id" in pod_env.termination()["message"]
    assert not (pod_env.volume / "etc").exists()


def test_invalid_disk_gb_names_the_variable(pod_env: PodEnv) -> None:
    pod_env.set(diskGB="lots")

    assert run_configure(pod_env, stage([])) == 1

    assert "diskGB" in pod_env.termination()["message"]


def test_missing_workflow_document_names_it(pod_env: PodEnv) -> None:
    assert configure.main([]) == 1

    assert str(pod_env.workflow_path) in pod_env.termination()["message"]


# -- secrets and logs ---------------------------------------------------------


def test_log_file_and_stdout_never_show_url_query_or_credentials(
    pod_env: PodEnv, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    base = file_server.serve("/data.csv", "rows").replace("http://", "http://user:pa55word@")
    ok = base + "?token=SECRET-TOKEN-123"
    missing = file_server.url("/gone.csv").replace("http://", "http://user:pa55word@") + "?sig=SECRET-SIG-456"

    assert run_configure(pod_env, stage([data_input(DID_A, ok, missing)])) == 1

    log = pod_env.log("configure.log")
    everything = log + capsys.readouterr().out + pod_env.termination_path.read_text()
    assert "downloaded 4 bytes" in log
    for secret in ("SECRET-TOKEN-123", "SECRET-SIG-456", "pa55word", "token=", "sig="):
        assert secret not in everything
    assert "input[0].url[1]" in pod_env.termination()["message"]
    assert "HTTP 404" in pod_env.termination()["message"]


def test_runs_as_a_python_module(pod_env: PodEnv) -> None:
    pod_env.write_workflow(stage([], {"rawcode": "print(2)"}))

    completed = subprocess.run(
        [sys.executable, "-m", "operator_engine.pods.configure"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "provisioning done" in completed.stdout


def test_retry_warnings_reach_the_log_without_the_query_string(pod_env: PodEnv, closed_port_url: str) -> None:
    url = closed_port_url + "?token=SECRET-TOKEN-789"

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 1

    log = pod_env.log("configure.log")
    assert "attempt 1 of 4 failed (connection failed: Connection refused)" in log
    assert "SECRET-TOKEN-789" not in log
