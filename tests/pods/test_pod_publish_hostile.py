"""The publish pod against a hostile algorithm's volume (docs/SECURITY.md §3, and escaped upload names).

The algorithm wrote ``outputs/`` and ``logs/``: it may leave links to the
publish pod's secrets, swap a file for a link between the listing and the
read, leave a FIFO (which blocks a reader), or name its files to break out
of the job's key prefix or the multipart header. None of it may leak a
secret, hang publish, or put anything outside ``<jobId>/outputs/``.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from operator_engine.pods import publish
from operator_engine.pods.storage import MAX_NAME_LENGTH, object_name

from .harness import S3, FakeIpfs, PodEnv

SECRET = "STORAGE-KEY-do-not-publish-7e1d"
SAFE_NAME = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


# -------------------------------------------------------------- the three targets, one interface


class Uploads:
    """What a target received: (name, content) pairs, whichever target it is."""

    def __init__(self, kind: str, env: PodEnv, tmp_path: Path, ipfs: FakeIpfs | None, s3: S3 | None) -> None:
        self.kind, self.env, self.tmp_path, self.ipfs, self.s3 = kind, env, tmp_path, ipfs, s3

    def items(self) -> list[tuple[str, bytes]]:
        if self.kind == "local":
            root = self.tmp_path / "storage"
            return [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
        if self.kind == "s3":
            assert self.s3 is not None
            return [
                (key, self.s3.read(bucket, key))
                for bucket in (self.s3.output_bucket, self.s3.admin_bucket)
                for key in self.s3.keys(bucket)
            ]
        assert self.ipfs is not None
        return [(upload.filename, upload.content) for upload in self.ipfs.uploads]

    def output_names(self) -> list[str]:
        """The stored name of each output (the last path component of a key or file)."""
        names = (
            [name for name, _ in self.items() if "outputs" in name.split("/")]
            if self.kind != "ipfs"
            else [name for name, _ in self.items() if name not in ("algorithm.log", "configure.log", "publish.log")]
        )
        return [name.rsplit("/", 1)[-1] for name in names]

    def everything(self) -> bytes:
        blob = b""
        for name, content in self.items():
            blob += name.encode("utf-8", "surrogateescape") + b"\n" + content
            if name.endswith(".tar.gz"):
                blob += _tar_contents(content)
        return blob


def _tar_contents(content: bytes) -> bytes:
    import io

    out = b""
    with tarfile.open(fileobj=io.BytesIO(content)) as tar:
        for member in tar.getmembers():
            out += member.name.encode() + b"\n" + (member.linkname or "").encode()
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                out += extracted.read()
    return out


@pytest.fixture(params=["local", "s3", "ipfs"])
def target(request: pytest.FixtureRequest, pod_env: PodEnv, tmp_path: Path) -> Uploads:
    ipfs = s3 = None
    if request.param == "local":
        pod_env.set(LOCAL_STORAGE_DIR=str(tmp_path / "storage"))
    elif request.param == "s3":
        s3 = request.getfixturevalue("s3")
    else:
        ipfs = request.getfixturevalue("ipfs_server")
        pod_env.set(IPFS_OUTPUT=ipfs.base_url)
    pod_env.write_workflow({"index": 0, "input": []}, job_id="job-9")
    (pod_env.volume / "outputs").mkdir(parents=True)
    return Uploads(request.param, pod_env, tmp_path, ipfs, s3)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A file only the publish pod can reach (its credentials), outside the volume."""
    path = tmp_path / "publish-pod-credentials"
    path.write_text(SECRET)
    return path


def run_publish(timeout: float = 60.0) -> int:
    """publish.main in a thread: a publish that blocks (on a FIFO) fails the test instead of hanging it."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(publish.main([])), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"publish did not end within {timeout:.0f} s (blocked on a FIFO?)"
    return result[0]


class SwappingScandir:
    """``os.scandir`` that, once it has listed a folder, swaps one entry for a link (the race, made certain)."""

    def __init__(self, real: Callable[..., Any], victim: Path, link_to: Path) -> None:
        self.real, self.victim, self.link_to, self.done = real, victim, link_to, False

    def __call__(self, folder: Any = ".") -> Any:
        with self.real(folder) as listing:
            entries = list(listing)
        for entry in entries:
            if entry.name == self.victim.name and not self.done:
                self.done = True
                self.victim.unlink()
                self.victim.symlink_to(self.link_to)
        return _Listing(entries)


class _Listing:
    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries

    def __iter__(self) -> Iterator[Any]:
        return iter(self.entries)

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# -------------------------------------------------------------- links, swaps, FIFOs, hard links


def test_a_link_to_a_secret_is_never_read(target: Uploads, secret_file: Path) -> None:
    os.symlink(secret_file, target.env.volume / "outputs" / "result.csv")
    os.symlink("/proc/self/environ", target.env.volume / "outputs" / "environ")

    assert run_publish() == 0

    assert SECRET.encode() not in target.everything()
    assert b"PATH=" not in target.everything()
    assert "skipped 'result.csv': a symbolic link" in target.env.log("publish.log")


def test_a_file_swapped_for_a_link_after_the_listing_is_not_followed(
    target: Uploads, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.env.write("outputs/result.csv", "harmless")
    victim = target.env.volume / "outputs" / "result.csv"
    monkeypatch.setattr(os, "scandir", SwappingScandir(os.scandir, victim, secret_file))

    assert run_publish() == 0

    assert SECRET.encode() not in target.everything()


def test_a_file_swapped_between_its_check_and_its_open_is_not_followed(
    target: Uploads, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target.env.write("outputs/a.csv", "harmless")
    target.env.write("outputs/b.csv", "harmless too")
    victim = target.env.volume / "outputs" / "a.csv"
    real_stat = os.stat

    def stat_then_swap(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if path == "a.csv" and not victim.is_symlink():
            victim.unlink()
            victim.symlink_to(secret_file)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)

    assert run_publish() == 0

    assert SECRET.encode() not in target.everything()
    assert b"harmless too" in target.everything()


def test_a_linked_folder_inside_the_outputs_is_not_entered(target: Uploads, secret_file: Path) -> None:
    target.env.write("outputs/result.csv", "fine")
    os.symlink(secret_file.parent, target.env.volume / "outputs" / "elsewhere")

    assert run_publish() == 0

    assert SECRET.encode() not in target.everything()
    assert b"fine" in target.everything()


@pytest.mark.parametrize("alone", [True, False], ids=["fifo-alone", "fifo-among-files"])
def test_a_fifo_does_not_block_publish(target: Uploads, alone: bool) -> None:
    os.mkfifo(target.env.volume / "outputs" / "pipe")
    if not alone:
        target.env.write("outputs/result.csv", "fine")
    (target.env.volume / "logs").mkdir()
    os.mkfifo(target.env.volume / "logs" / "algorithm.log")

    assert run_publish() == 0

    assert target.env.termination()["algologUrl"] is None
    assert "skipped 'pipe': a FIFO" in target.env.log("publish.log")


def test_a_hard_link_to_a_file_outside_the_outputs_is_refused(target: Uploads) -> None:
    data = target.env.write("inputs/did:op:1/0", "the provider's data " + SECRET)
    os.link(data, target.env.volume / "outputs" / "copy.csv")

    assert run_publish() == 0

    assert SECRET.encode() not in target.everything()
    assert "hard links" in target.env.log("publish.log")


# -------------------------------------------------------------- names


HOSTILE_NAMES = [
    'quote"and\\backslash.csv',
    "crlf\r\nX-Injected: 1\r\n\r\n.csv",
    "tab\tbell\x07escape\x1b[31m.csv",
    "..hidden",
    "x" * 250,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["quote", "crlf", "control", "dots", "long"])
def test_a_hostile_output_name_is_escaped(target: Uploads, name: str) -> None:
    target.env.write(f"outputs/{name}", "content")

    assert run_publish() == 0

    [stored] = target.output_names()
    assert set(stored) <= SAFE_NAME and not stored.startswith(".") and len(stored) <= MAX_NAME_LENGTH, stored
    assert b"content" in target.everything()
    if target.kind == "ipfs":
        assert target.ipfs is not None
        assert all("X-Injected" not in header for upload in target.ipfs.uploads for header in upload.headers)
    log = target.env.log("publish.log")
    assert all("\r" not in line and "\x1b" not in line and "\x07" not in line for line in log.splitlines())


def test_a_non_utf8_output_name_is_escaped(target: Uploads) -> None:
    raw = os.fsencode(target.env.volume / "outputs") + b"/r\xe9sultat\xff.csv"
    with open(raw, "wb") as handle:
        handle.write(b"content")

    assert run_publish() == 0

    [stored] = target.output_names()
    assert set(stored) <= SAFE_NAME, stored


@pytest.mark.parametrize(
    "name, expected",
    [
        ("result.csv", "result.csv"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("/absolute/path", "_absolute_path"),
        ("..", "output"),
        ("", "output"),
        ('a"b\r\nc', "a_b__c"),
        ("caf\udce9", "caf_"),
    ],
)
def test_object_names_keep_only_safe_characters(name: str, expected: str) -> None:
    assert object_name(name) == expected


def test_local_uploads_stay_in_the_jobs_folder_whatever_the_name(tmp_path: Path) -> None:
    from operator_engine.pods.storage import LocalTarget

    source = tmp_path / "source"
    source.write_text("x")
    with source.open("rb") as handle:
        url = LocalTarget(tmp_path / "storage", "job-1").upload(handle, "outputs", "../../../escaped")
    stored = Path(url2pathname(urlsplit(url).path))
    assert stored.parent == tmp_path / "storage" / "job-1" / "outputs"
    assert not (tmp_path / "escaped").exists()
