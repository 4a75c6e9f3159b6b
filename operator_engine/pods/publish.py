"""The publish pod: uploads a job's results and logs, and reports their URLs.

Outputs: one regular file in ``$VOLUME/outputs`` is uploaded as is; several
entries (or a folder, a link, anything else) become one ``outputs.tar.gz``;
none gives ``outputsUrl: []``. The algorithm log goes to the output target,
``configure.log`` and ``publish.log`` to the admin-logs target; publish.log
last, after its final line is written.

The algorithm that ran before this pod is untrusted and wrote the volume:
a symbolic link planted there (``outputs -> /proc/self``) would make this pod,
which holds the storage credentials, upload its own files. So nothing is read
through a link: links are archived as links, and a linked ``outputs`` or
``logs`` folder or log file is refused.

Success: ``{"algologUrl", "configlogUrl", "publishlogUrl", "outputsUrl": [...]}``
in the termination log, exit 0 (a missing log gives ``null``). Failure:
``{"message": ...}``, exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def is_plain(path: Path, root: Path) -> bool:
    """True when ``path`` exists and neither it nor a folder between ``root`` and it is a link."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def is_regular_file(path: Path, root: Path) -> bool:
    """A regular file reached without following any link (see the module docstring)."""
    return is_plain(path, root) and stat.S_ISREG(os.lstat(path).st_mode)


def collect_outputs(paths: PodPaths, workdir: Path, logger: logging.Logger) -> Path | None:
    """The file to upload as the job's output, or ``None`` when there is none."""
    outputs = paths.outputs
    if not outputs.exists() and not outputs.is_symlink():
        logger.info("no outputs folder %s", outputs)
        return None
    if not is_plain(outputs, paths.volume) or not outputs.is_dir():
        raise PodError(f"{outputs} is not a folder (a link or a file was found there); refusing to read it")
    entries = sorted(os.scandir(outputs), key=lambda entry: entry.name)
    if not entries:
        logger.info("the algorithm wrote no outputs")
        return None
    if len(entries) == 1 and entries[0].is_file(follow_symlinks=False):
        return Path(entries[0].path)
    return archive(outputs, [entry.name for entry in entries], workdir / ARCHIVE_NAME, logger)


def archive(folder: Path, names: list[str], destination: Path, logger: logging.Logger) -> Path:
    """Pack ``names`` of ``folder`` into a gzip tarball; links are stored as links, never followed."""
    try:
        with tarfile.open(destination, "w:gz") as tar:
            for name in names:
                tar.add(folder / name, arcname=name, recursive=True)
    except OSError as exc:
        raise PodError(f"cannot archive {folder} into {destination.name}: {exc.strerror or exc}") from None
    logger.info("archived %d output entries into %s (%d bytes)", len(names), destination.name,
                destination.stat().st_size)
    return destination


class Publisher:
    """One run of the publish pod."""

    def __init__(self, paths: PodPaths, target: Target, logger: logging.Logger,
                 publish_outputs: bool = True) -> None:
        self.paths = paths
        self.target = target
        self.logger = logger
        self.with_outputs = publish_outputs

    def upload(self, path: Path, area: Area, name: str) -> str:
        self.logger.info("uploading %s to %s (%s/%s)", path, self.target.description, area, name)
        url = self.target.upload(path, area, name)
        self.logger.info("uploaded %s: %s", name, redact_url(url))
        return url

    def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {"algologUrl": None, "configlogUrl": None, "publishlogUrl": None, "outputsUrl": []}
        result["outputsUrl"] = self.publish_outputs()
        result["algologUrl"] = self.publish_log(self.paths.logs / "algorithm.log", self.paths.volume, "logs")
        result["configlogUrl"] = self.publish_log(
            self.paths.adminlogs / "configure.log", self.paths.adminlogs, "adminlogs"
        )
        publish_log = self.paths.adminlogs / "publish.log"
        self.logger.info("uploading publish.log, the last step")
        flush_pod_logger(self.logger)
        if is_regular_file(publish_log, self.paths.adminlogs):
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
            return [self.upload(output, "outputs", output.name)]

    def publish_log(self, path: Path, root: Path, area: Area) -> str | None:
        if not is_regular_file(path, root):
            self.logger.info("no %s to upload (missing, or not a regular file)", path)
            return None
        return self.upload(path, area, path.name)


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
