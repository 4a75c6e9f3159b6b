"""The publish pod: uploads a job's results and logs, and reports their URLs.

Outputs: one regular file in ``$VOLUME/outputs`` is uploaded as is; several
entries (or a folder, a link, anything else) become one ``outputs.tar.gz``;
none gives ``outputsUrl: []``. The algorithm log goes to the output target,
``configure.log`` and ``publish.log`` to the admin-logs target; publish.log
last, after its final line is written.

The algorithm that ran before this pod is untrusted and wrote the volume.
A symbolic link planted there (``outputs/x -> /proc/self/environ``) would
make this pod, which holds the storage credentials, upload its own secrets;
a FIFO would make it hang. So every file is opened without following links
(``O_NOFOLLOW``), relative to a folder descriptor itself opened the same way
(``dir_fd=``, never a path walked again), and checked with ``fstat`` on the
open descriptor, which is also what is read: a name swapped for a link
between a check and a read cannot redirect the read. Links, FIFOs, sockets,
devices and files with more than one hard link are skipped with a log line
that names them (escaped). The operator also starts this pod only once the
algorithm's pods are gone (see ``pipeline.decide``); this is the second wall.

Success: ``{"algologUrl", "configlogUrl", "publishlogUrl", "outputsUrl": [...]}``
in the termination log, exit 0 (a missing log gives ``null``). Failure:
``{"message": ...}``, exit 1.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .common import (
    PodError,
    PodPaths,
    SecretMasker,
    close_pod_logger,
    environ,
    flush_pod_logger,
    job_id,
    library_logs_to,
    load_workflow,
    open_pod_logger,
    redact_url,
    secret_values,
    truncate,
    write_termination_message,
)
from .storage import Area, Target, select_target

ARCHIVE_NAME = "outputs.tar.gz"


#: Flags for a folder of the volume: never through a link.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags for a file: never through a link, and never blocking (a FIFO opens at once; it is then skipped).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: A log line names at most this much of a path.
SHOWN_LIMIT = 300


def shown(relative: str) -> str:
    """A path from the volume, safe in one log line: quoted, control characters and non-ASCII escaped."""
    text = ascii(relative)
    return text if len(text) <= SHOWN_LIMIT else text[:SHOWN_LIMIT] + "...'"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_folder(name: str, parent: int | None) -> int:
    """A descriptor of the folder ``name`` in ``parent`` (a descriptor, or None for a trusted absolute path).

    Raises OSError (ELOOP for a link, ENOTDIR for anything but a folder).
    """
    return os.open(name, DIR_FLAGS if parent is not None else DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=parent)


def open_regular(name: str, folder: int, relative: str, logger: logging.Logger) -> BinaryIO | None:
    """The regular file ``name`` of the open ``folder``, opened without following a link; else None, logged.

    The kind is checked before opening (a device is never opened) and again on
    the descriptor, with the same inode: a name swapped between the two is skipped.
    A file with more than one hard link is refused: the other name may be outside
    the outputs (a hard link to an input file, or to a file of another folder of
    the same volume), and which name is the "real" one cannot be told. (A hard
    link across volumes, to /proc or to the pod's own files, is impossible.)
    """
    try:
        before = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(before.st_mode):
        logger.warning("skipped %s: %s, not a regular file", shown(relative), _kind(before.st_mode))
        return None
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=folder)
    except OSError as exc:
        logger.warning("skipped %s: it changed while being read (%s)", shown(relative), os.strerror(exc.errno or 0))
        return None
    after = os.fstat(fd)
    reason = None
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        reason = "it changed while being read"
    elif after.st_nlink > 1:
        reason = f"it has {after.st_nlink} hard links (one may be outside the outputs)"
    if reason is not None:
        os.close(fd)
        logger.warning("skipped %s: %s", shown(relative), reason)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_in(root: Path, relative: str, logger: logging.Logger) -> BinaryIO | None:
    """The regular file at ``relative`` (a few fixed components) under the trusted folder ``root``."""
    *folders, name = relative.split("/")
    opened: list[int] = []
    try:
        current = open_folder(str(root), None)
        opened.append(current)
        for folder in folders:
            current = open_folder(folder, current)
            opened.append(current)
        return open_regular(name, current, relative, logger)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning(
            "skipped %s: %s",
            shown(relative),
            "a folder on its way is a link or not a folder"
            if exc.errno in (errno.ELOOP, errno.ENOTDIR)
            else os.strerror(exc.errno or 0),
        )
        return None
    finally:
        for fd in opened:
            os.close(fd)


def _entries(folder: int) -> list[str]:
    with os.scandir(folder) as listing:
        return sorted(entry.name for entry in listing)


def collect_outputs(paths: PodPaths, workdir: Path, logger: logging.Logger) -> tuple[BinaryIO, str] | None:
    """The open file to upload as the job's output and its name, or ``None`` when there is none."""
    try:
        volume = open_folder(str(paths.volume), None)
    except FileNotFoundError:
        logger.info("no outputs folder %s", paths.outputs)
        return None
    try:
        try:
            outputs = open_folder("outputs", volume)
        except FileNotFoundError:
            logger.info("no outputs folder %s", paths.outputs)
            return None
        except OSError:
            raise PodError(
                f"{paths.outputs} is not a folder (a link or a file was found there); refusing to read it"
            ) from None
    finally:
        os.close(volume)
    try:
        names = _entries(outputs)
        if not names:
            logger.info("the algorithm wrote no outputs")
            return None
        if len(names) == 1 and stat.S_ISREG(os.stat(names[0], dir_fd=outputs, follow_symlinks=False).st_mode):
            single = open_regular(names[0], outputs, names[0], logger)
            return (single, names[0]) if single is not None else None
        return open(archive(outputs, workdir / ARCHIVE_NAME, logger), "rb"), ARCHIVE_NAME
    finally:
        os.close(outputs)


def archive(folder: int, destination: Path, logger: logging.Logger) -> Path:
    """Pack the regular files and folders under the open ``folder`` into a gzip tarball; nothing else."""
    count = 0

    def add(tar: tarfile.TarFile, parent: int, prefix: str) -> None:
        nonlocal count
        for name in _entries(parent):
            relative = f"{prefix}{name}"
            try:
                info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                try:
                    child = open_folder(name, parent)
                except OSError:
                    logger.warning("skipped %s: it changed while being read", shown(relative))
                    continue
                try:
                    tar.addfile(_member(relative, os.fstat(child)))
                    add(tar, child, relative + "/")
                finally:
                    os.close(child)
                continue
            source = open_regular(name, parent, relative, logger)
            if source is None:
                continue
            with source:
                tar.addfile(_member(relative, os.fstat(source.fileno())), source)
                count += 1

    try:
        with tarfile.open(destination, "w:gz") as tar:
            add(tar, folder, "")
    except OSError as exc:
        raise PodError(f"cannot archive the outputs into {destination.name}: {exc.strerror or exc}") from None
    logger.info("archived %d output files into %s (%d bytes)", count, destination.name, destination.stat().st_size)
    return destination


def _member(name: str, info: os.stat_result) -> tarfile.TarInfo:
    """A tar entry from a descriptor's fstat: the size read is the size stored."""
    member = tarfile.TarInfo(name)
    member.mode = stat.S_IMODE(info.st_mode) & 0o755
    member.mtime = int(info.st_mtime)
    if stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
    else:
        member.size = info.st_size
    return member


class Publisher:
    """One run of the publish pod."""

    def __init__(self, paths: PodPaths, target: Target, logger: logging.Logger, publish_outputs: bool = True) -> None:
        self.paths = paths
        self.target = target
        self.logger = logger
        self.with_outputs = publish_outputs

    def upload(self, source: BinaryIO, area: Area, name: str) -> str:
        self.logger.info("uploading %s to %s (%s)", shown(name), self.target.description, area)
        url = self.target.upload(source, area, name)
        self.logger.info("uploaded %s: %s", shown(name), redact_url(url))
        return url

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {"algologUrl": None, "configlogUrl": None, "publishlogUrl": None, "outputsUrl": []}
        result["outputsUrl"] = self.publish_outputs()
        result["algologUrl"] = self.publish_log(self.paths.volume, "logs/algorithm.log", "logs")
        result["configlogUrl"] = self.publish_log(self.paths.adminlogs, "configure.log", "adminlogs")
        self.logger.info("uploading publish.log, the last step")
        flush_pod_logger(self.logger)
        publish_log = open_in(self.paths.adminlogs, "publish.log", self.logger)
        if publish_log is not None:
            with publish_log:
                result["publishlogUrl"] = self.target.upload(publish_log, "adminlogs", "publish.log")
        return result

    def publish_outputs(self) -> list[str]:
        if not self.with_outputs:
            self.logger.warning("outputs withheld (PUBLISH_OUTPUTS=false: the filter stage did not pass them)")
            return []
        workdir_parent = self.paths.volume if self.paths.volume.is_dir() else None
        with tempfile.TemporaryDirectory(prefix=".publish-", dir=workdir_parent) as workdir:
            output = collect_outputs(self.paths, Path(workdir), self.logger)
            if output is None:
                return []
            source, name = output
            with source:
                return [self.upload(source, "outputs", name)]

    def publish_log(self, root: Path, relative: str, area: Area) -> str | None:
        source = open_in(root, relative, self.logger)
        if source is None:
            self.logger.info("no %s to upload (missing, or not a regular file)", root / relative)
            return None
        with source:
            return self.upload(source, area, relative.rsplit("/", 1)[-1])


def run(paths: PodPaths, env: Mapping[str, str], logger: logging.Logger) -> int:
    """Publish; return the exit code (0 success, 1 failure reported)."""
    masker = SecretMasker(secret_values(env))
    try:
        document = load_workflow(paths.workflow)
        job = job_id(document, paths.workflow)
        target = select_target(env, job, logger)
        logger.info("publishing job %s to %s", job, target.description)
        with_outputs = env.get("PUBLISH_OUTPUTS", "true").strip().lower() not in ("false", "0", "no")
        result = Publisher(paths, target, logger, publish_outputs=with_outputs).run()
    except PodError as exc:
        return report_failure(paths, exc.message, masker, logger)
    except Exception as exc:  # noqa: BLE001 - a bug must still reach the operator as a message
        logger.error("unexpected error:\n%s", traceback.format_exc())
        return report_failure(paths, f"unexpected error: {type(exc).__name__}: {exc}", masker, logger)
    write_termination_message(paths.termination_log, result, logger)
    return 0


def report_failure(paths: PodPaths, message: str, masker: SecretMasker, logger: logging.Logger) -> int:
    safe = truncate(masker.mask(message))
    logger.error("publishing failed: %s", safe)
    write_termination_message(paths.termination_log, {"message": safe}, logger)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``operator-engine publish``."""
    parser = argparse.ArgumentParser(
        prog="operator-engine publish",
        description="Upload a Compute-to-Data job's outputs and logs to IPFS, S3 or a local folder.",
    )
    parser.parse_args(argv)
    env = environ()
    paths = PodPaths.from_env(env)
    logger = open_pod_logger("publish", paths.adminlogs / "publish.log", env)
    try:
        with library_logs_to(logger, "urllib3", "botocore", "boto3", "s3transfer"):
            return run(paths, env, logger)
    finally:
        close_pod_logger(logger)


if __name__ == "__main__":
    sys.exit(main())
