"""The configure pod: provisions a job's data volume before the algorithm runs.

It reads the workflow document, creates the folder layout of docs/contract.md §2.4,
downloads every input file to ``$VOLUME/inputs/<DID>/<i>``, writes the
algorithm to ``$VOLUME/transformations/algorithm`` (further files ``1..n``)
and the DDOs given in the workflow to ``$VOLUME/ddos/<DID>``.

On failure it writes ``{"statusCode": 31|32, "message": ...}`` to the
termination log and exits 1: 31 when a data input (or the workflow document
itself) could not be provisioned, 32 when the algorithm could not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .addresses import ALLOWED_NETWORKS_VARIABLE, parse_allow_list
from .common import (
    PodError,
    PodPaths,
    SecretMasker,
    check_did,
    close_pod_logger,
    env_float,
    environ,
    first_stage,
    library_logs_silenced,
    load_workflow,
    open_pod_logger,
    secret_values,
    truncate,
    write_termination_message,
)
from .downloads import ByteBudget, Downloader, DownloadError

DATA_FAILED = 31
ALGORITHM_FAILED = 32

DEFAULT_TIMEOUT = 30.0
DEFAULT_BACKOFF = 0.5
#: Each download, every hop, retry and byte of it; within the default maxJobDuration (3600 s).
DEFAULT_TOTAL_TIMEOUT = 1800.0
#: All downloads of the job together; a clear 31/32 before the Job's own deadline kills the pod.
DEFAULT_OVERALL_TIMEOUT = 3000.0
RETRIES = 3


class Provisioner:
    """One run of the configure pod; ``status_code`` tracks which phase may fail."""

    def __init__(self, paths: PodPaths, env: Mapping[str, str], logger: logging.Logger) -> None:
        self.paths = paths
        self.env = env
        self.logger = logger
        self.status_code = DATA_FAILED
        self._files_per_did: dict[str, int] = {}
        self._stage_urls: frozenset[str] = frozenset()

    def run(self) -> None:
        document = load_workflow(self.paths.workflow)
        stage = first_stage(document, self.paths.workflow)
        self._stage_urls = stage_urls(stage)
        self.logger.info("configuring job %s", document.get("jobId", "<no jobId>"))
        downloader = self._make_downloader()
        try:
            create_layout(self.paths, self.logger)
            self.provision_inputs(stage.get("input"), downloader)
            self.status_code = ALGORITHM_FAILED
            self.provision_algorithm(stage.get("algorithm"), downloader)
        finally:
            downloader.close()
        self.logger.info("provisioning done: %d bytes downloaded", downloader.budget.used)

    def _make_downloader(self) -> Downloader:
        disk_gb = env_float(self.env, "diskGB", None)
        timeout = env_float(self.env, "CONFIGURE_TIMEOUT", DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT
        backoff = env_float(self.env, "CONFIGURE_BACKOFF", DEFAULT_BACKOFF)
        assert backoff is not None
        # 0 turns a total limit off (the Job's activeDeadlineSeconds still bounds the pod).
        total = env_float(self.env, "CONFIGURE_TOTAL_TIMEOUT", DEFAULT_TOTAL_TIMEOUT) or None
        overall = env_float(self.env, "CONFIGURE_OVERALL_TIMEOUT", DEFAULT_OVERALL_TIMEOUT) or None
        try:
            allow = parse_allow_list(self.env.get(ALLOWED_NETWORKS_VARIABLE))
        except ValueError as exc:
            raise PodError(f"environment variable {ALLOWED_NETWORKS_VARIABLE}: {exc}", DATA_FAILED) from None
        if allow.networks or allow.hosts:
            self.logger.info("fetching is also allowed from %s (%s)", allow.describe(), ALLOWED_NETWORKS_VARIABLE)
        return Downloader(
            ByteBudget.from_disk_gb(disk_gb),
            timeout,
            self.logger,
            RETRIES,
            backoff,
            allow=allow,
            total_timeout=total,
            overall_timeout=overall,
        )

    # -- inputs -------------------------------------------------------------

    def provision_inputs(self, inputs: Any, downloader: Downloader) -> None:
        if inputs is None:
            inputs = []
        if not isinstance(inputs, list):
            raise PodError("stages[0].input must be a list", DATA_FAILED)
        if not inputs:
            self.logger.info("no data inputs")
        for position, item in enumerate(inputs):
            self.provision_input(position, item, downloader)

    def provision_input(self, position: int, item: Any, downloader: Downloader) -> None:
        field = f"input[{position}]"
        if not isinstance(item, dict):
            raise PodError(f"{field} must be an object", DATA_FAILED)
        did = _checked_did(item.get("id"), f"{field}.id", DATA_FAILED)
        urls = _url_list(item.get("url"), f"input {did} ({field}).url", DATA_FAILED)
        if not urls:
            if item.get("remote") is not None:
                raise PodError(
                    f"input {did} ({field}) has a 'remote' source, which needs Provider resolution; "
                    "this configure pod does not support it (give 'url' instead)",
                    DATA_FAILED,
                )
            raise PodError(f"input {did} ({field}) has no 'url'", DATA_FAILED)
        self.write_ddo(did, item.get("ddo"), DATA_FAILED)
        folder = self.paths.inputs / did
        for url_index, url in enumerate(urls):
            file_index = self._files_per_did.get(did, 0)
            self._files_per_did[did] = file_index + 1
            # The field and the DID, never the URL: this log and message reach the consumer,
            # and a URL may carry a pre-signed token or name a host of the provider's.
            label = f"{field} ({did}) url {url_index + 1} of {len(urls)}"
            try:
                downloader.fetch(url, folder / str(file_index), label)
            except DownloadError as exc:
                raise PodError(f"input {did} ({field}.url[{url_index}]): {exc}", DATA_FAILED) from None

    # -- algorithm ----------------------------------------------------------

    def provision_algorithm(self, algorithm: Any, downloader: Downloader) -> None:
        if algorithm is None:
            algorithm = {}
        if not isinstance(algorithm, dict):
            raise PodError("stages[0].algorithm must be an object", ALGORITHM_FAILED)
        did = None
        if algorithm.get("id"):
            did = _checked_did(algorithm["id"], "algorithm.id", ALGORITHM_FAILED)
        name = f"algorithm {did}" if did else "algorithm"
        if did is not None:
            self.write_ddo(did, algorithm.get("ddo"), ALGORITHM_FAILED)
        rawcode = algorithm.get("rawcode")
        if isinstance(rawcode, str) and rawcode:
            self._write_rawcode(rawcode)
            return
        urls = _url_list(algorithm.get("url"), f"{name} url", ALGORITHM_FAILED)
        if urls:
            self._download_algorithm(name, urls, downloader)
            return
        if algorithm.get("remote") is not None:
            raise PodError(
                f"{name} has a 'remote' source, which needs Provider resolution; "
                "this configure pod does not support it (give 'url' or 'rawcode' instead)",
                ALGORITHM_FAILED,
            )
        # An image may carry its own code (an entrypoint without $ALGO): not an error here.
        self.logger.warning("%s has neither 'rawcode' nor 'url': nothing written to transformations/", name)

    def _write_rawcode(self, rawcode: str) -> None:
        target = self.paths.transformations / "algorithm"
        try:
            target.write_text(rawcode, encoding="utf-8")
        except OSError as exc:
            raise PodError(f"algorithm: cannot write {target}: {exc.strerror or exc}", ALGORITHM_FAILED) from None
        self.logger.info("wrote algorithm rawcode (%d characters) to %s", len(rawcode), target)

    def _download_algorithm(self, name: str, urls: list[str], downloader: Downloader) -> None:
        for index, url in enumerate(urls):
            target = self.paths.transformations / ("algorithm" if index == 0 else str(index))
            label = f"{name} url {index + 1} of {len(urls)}"
            try:
                downloader.fetch(url, target, label)
            except DownloadError as exc:
                raise PodError(f"{name} (algorithm.url[{index}]): {exc}", ALGORITHM_FAILED) from None

    # -- DDOs ---------------------------------------------------------------

    def write_ddo(self, did: str, ddo: Any, status_code: int) -> None:
        """Write ``ddo`` as JSON to ``ddos/<did>`` (algorithms read their datasets' metadata there).

        The algorithm reads this folder, so the DDO is written without where the
        data lives (``redact_ddo``): docs/SECURITY.md, item 1.
        """
        if ddo is None:
            return
        if not isinstance(ddo, dict):
            self.logger.warning("ignoring the ddo of %s: it is not a JSON object", did)
            return
        target = self.paths.ddos / did
        try:
            target.write_text(json.dumps(redact_ddo(ddo, self._stage_urls), indent=2), encoding="utf-8")
        except OSError as exc:
            raise PodError(f"cannot write the ddo of {did} to {target}: {exc.strerror or exc}", status_code) from None
        self.logger.info("wrote ddo of %s to %s", did, target)


#: DDO keys that say where files live or hold them encrypted for the Provider
#: (Ocean DDOs: ``files[].url``, ``encryptedFiles``, v4's encrypted ``files``
#: string); the algorithm needs none of them, and a DDO may carry them in clear.
DDO_LOCATION_KEYS = frozenset({"url", "urls", "encryptedfiles"})


def stage_urls(stage: Mapping[str, Any]) -> frozenset[str]:
    """Every input and algorithm URL of the stage: strings that must not reach a DDO file."""
    found: set[str] = set()
    sources = [*(stage.get("input") or [])] if isinstance(stage.get("input"), list) else []
    sources.append(stage.get("algorithm"))
    for source in sources:
        if not isinstance(source, dict):
            continue
        urls = source.get("url")
        for url in urls if isinstance(urls, list) else [urls]:
            if isinstance(url, str) and url:
                found.add(url)
    return frozenset(found)


def redact_ddo(value: Any, urls: frozenset[str]) -> Any:
    """``value`` without the keys of ``DDO_LOCATION_KEYS``, the string form of ``files``,
    and any string that holds one of ``urls`` (plain or percent-encoded)."""
    forms = {form for url in urls for form in (url, quote(url, safe=""), quote(url, safe=":/"))}

    def clean(item: Any) -> Any:
        if isinstance(item, dict):
            return {
                key: clean(child)
                for key, child in item.items()
                if not (str(key).lower() in DDO_LOCATION_KEYS or (key == "files" and isinstance(child, str)))
                and not _holds(child, forms)
            }
        if isinstance(item, list):
            return [clean(child) for child in item if not _holds(child, forms)]
        return item

    return clean(value)


def _holds(item: Any, forms: set[str]) -> bool:
    return isinstance(item, str) and any(form in item for form in forms)


def create_layout(paths: PodPaths, logger: logging.Logger) -> None:
    """Create the folders of docs/contract.md §2.4.

    ``outputs`` and ``logs`` are made world-writable because the algorithm
    image may run as any user, and must be able to write its results there.
    """
    for folder in (paths.inputs, paths.transformations, paths.ddos, paths.outputs, paths.logs):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PodError(f"cannot create {folder}: {exc.strerror or exc}", DATA_FAILED) from None
    for folder in (paths.outputs, paths.logs):
        try:
            os.chmod(folder, 0o777)
        except OSError as exc:
            logger.warning("cannot make %s writable for the algorithm: %s", folder, exc.strerror or exc)
    logger.info("created the folder layout under %s", paths.volume)


def _checked_did(value: Any, field: str, status_code: int) -> str:
    try:
        return check_did(value, field)
    except PodError as exc:
        raise PodError(exc.message, status_code) from None


def _url_list(value: Any, field: str, status_code: int) -> list[str]:
    """``url`` as a list: operator-service sends a list, older documents a string."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(url, str) and url for url in value):
        return list(value)
    raise PodError(f"{field} must be a URL string or a list of URL strings", status_code)


def report_failure(paths: PodPaths, code: int, message: str, masker: SecretMasker, logger: logging.Logger) -> None:
    """Log the failure and hand it to the operator through the termination message."""
    safe = truncate(masker.mask(message))
    logger.error("provisioning failed (status %d): %s", code, safe)
    write_termination_message(paths.termination_log, {"statusCode": code, "message": safe}, logger)


def run(paths: PodPaths, env: Mapping[str, str], logger: logging.Logger) -> int:
    """Provision the volume; return the exit code (0 success, 1 failure reported)."""
    masker = SecretMasker(secret_values(env), hide_urls=True)
    provisioner = Provisioner(paths, env, logger)
    try:
        provisioner.run()
    except PodError as exc:
        report_failure(paths, exc.status_code or provisioner.status_code, exc.message, masker, logger)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug must still reach the operator as 31/32
        logger.error("unexpected error:\n%s", traceback.format_exc())
        report_failure(paths, provisioner.status_code, f"unexpected error: {type(exc).__name__}: {exc}", masker, logger)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``operator-engine configure``."""
    parser = argparse.ArgumentParser(
        prog="operator-engine configure",
        description="Provision a Compute-to-Data job's volume (inputs, algorithm, DDOs). "
        "Reads VOLUME, ADMINLOGS, WORKFLOW, TERMINATION_LOG, diskGB, CONFIGURE_TIMEOUT, CONFIGURE_BACKOFF, "
        "CONFIGURE_TOTAL_TIMEOUT, CONFIGURE_OVERALL_TIMEOUT, CONFIGURE_ALLOWED_NETWORKS.",
    )
    parser.parse_args(argv)
    env = environ()
    paths = PodPaths.from_env(env)
    # configure.log is published with the results: it names fields and DIDs, never a URL.
    logger = open_pod_logger("configure", paths.adminlogs / "configure.log", env, hide_urls=True)
    try:
        with library_logs_silenced("urllib3"):
            return run(paths, env, logger)
    finally:
        close_pod_logger(logger)


if __name__ == "__main__":
    sys.exit(main())
