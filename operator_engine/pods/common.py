"""Plumbing shared by the pod programs: environment, logging, reporting.

Nothing here knows about downloads or storage; it only gives both programs
the same conventions (paths relative to ``VOLUME``, log lines to stdout and an
admin log file, a JSON termination message) and the same guarantees about
secrets (credential values and URL query strings never reach a log line or a
termination message).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Environment variables whose *values* must never appear in any output.
SECRET_ENV_VARS: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "IPFS_API_KEY",
    "IPFS_API_CLIENT",
    "OPERATOR_PRIVATE_KEY",
    "secret",
)

#: Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096

#: Same syntax the operator enforces (docs/contract.md §1.1): DIDs become directory names.
_DID_RE = re.compile(r"^did:[a-z0-9]+:(?:[A-Za-z0-9._\-:]|%[0-9A-Fa-f]{2})+$")

_URL_IN_TEXT_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s'\"<>]+)")

#: A query string quoted without its URL (urllib3 logs ``/path?query`` on retries).
_QUERY_IN_TEXT_RE = re.compile(r"(?<=[^\s'\"(])\?[^\s'\"()]*=[^\s'\"()]*")


class PodError(Exception):
    """A failure a person should read: the message names what went wrong.

    ``status_code`` is the Workflow status code it maps to (31/32 for
    configure; unused by publish).
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


@dataclass(frozen=True)
class PodPaths:
    """Where things live, from ``VOLUME``/``ADMINLOGS``/``WORKFLOW``/``TERMINATION_LOG``."""

    volume: Path
    adminlogs: Path
    workflow: Path
    termination_log: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodPaths:
        return cls(
            volume=Path(env.get("VOLUME") or "/data"),
            adminlogs=Path(env.get("ADMINLOGS") or "/data/adminlogs"),
            workflow=Path(env.get("WORKFLOW") or "/workflow.json"),
            termination_log=Path(env.get("TERMINATION_LOG") or "/dev/termination-log"),
        )

    @property
    def inputs(self) -> Path:
        return self.volume / "inputs"

    @property
    def transformations(self) -> Path:
        return self.volume / "transformations"

    @property
    def ddos(self) -> Path:
        return self.volume / "ddos"

    @property
    def outputs(self) -> Path:
        return self.volume / "outputs"

    @property
    def logs(self) -> Path:
        return self.volume / "logs"


# --------------------------------------------------------------------------
# Environment values
# --------------------------------------------------------------------------


def env_float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A non-negative number from ``env[name]``; the error names the variable."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PodError(f"environment variable {name}={raw!r} is not a number") from None
    if value < 0 or value != value:  # NaN check without math import
        raise PodError(f"environment variable {name}={raw!r} must be a number >= 0")
    return value


# --------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without userinfo, query string or fragment.

    Input URLs are often pre-signed or carry tokens (``?X-Amz-Signature=``,
    ``user:pass@``); the scheme, host and path are enough for a person to
    know which URL failed.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0].split("#", 1)[0]
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_urls_in_text(text: str) -> str:
    """Apply :func:`redact_url` to every ``scheme://...`` found in free text."""
    return _URL_IN_TEXT_RE.sub(lambda m: redact_url(m.group(0)), text)


def hide_urls_in_text(text: str) -> str:
    """Replace every ``scheme://...`` in free text by ``<url>`` (a log whose reader must not learn URLs)."""
    return _URL_IN_TEXT_RE.sub("<url>", text)


class SecretMasker(logging.Filter):
    """Masks known secret values and URL credentials in every log record.

    A second line of defence: the programs already avoid formatting secrets,
    but a library's exception text may quote a URL or a header.
    """

    def __init__(self, secrets: Iterable[str], *, hide_urls: bool = False) -> None:
        super().__init__()
        # Very short values would mask half of every line; they are no secret anyway.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._hide_urls = hide_urls

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if self._hide_urls:
            text = hide_urls_in_text(text)
        return _QUERY_IN_TEXT_RE.sub("?***", redact_urls_in_text(text))

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        return True


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values of :data:`SECRET_ENV_VARS` that are set."""
    return [env[name] for name in SECRET_ENV_VARS if env.get(name)]


# --------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------


class _UTCFormatter(logging.Formatter):
    """RFC 3339 UTC timestamps, like the Workflow status dates."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def open_pod_logger(name: str, log_file: Path, env: Mapping[str, str], *, hide_urls: bool = False) -> logging.Logger:
    """A logger writing to stdout and appending to ``log_file``.

    ``hide_urls``: replace any URL a line may still quote (a library's
    exception text) by ``<url>``, for a log that reaches the consumer.

    The logger is private to one run (not registered with ``logging``), so
    repeated runs in one process (tests) never share handlers; call
    :func:`close_pod_logger` when done. Appending keeps the lines of an
    earlier attempt when Kubernetes restarts the pod.
    """
    logger = logging.Logger(name, level=logging.INFO)
    formatter = _UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    masker = SecretMasker(secret_values(env), hide_urls=hide_urls)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    file_error: OSError | None = None
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    except OSError as exc:
        file_error = exc  # still log to stdout: the operator can read the pod log
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(masker)
        logger.addHandler(handler)
    if file_error is not None:
        logger.warning("cannot open admin log file %s: %s", log_file, file_error.strerror or file_error)
    return logger


@contextmanager
def _libraries_logging_to(names: tuple[str, ...], handlers: list[logging.Handler], level: int) -> Iterator[None]:
    """Give the named library loggers only ``handlers`` and ``level``, without propagation; restore them after."""
    saved = []
    for name in names:
        library = logging.getLogger(name)
        saved.append((library, library.propagate, list(library.handlers), library.level))
        library.propagate = False
        library.handlers = list(handlers)
        library.setLevel(level)
    try:
        yield
    finally:
        for library, propagate, handlers, level in saved:
            library.propagate = propagate
            library.handlers = handlers
            library.setLevel(level)


@contextmanager
def library_logs_to(logger: logging.Logger, *names: str) -> Iterator[None]:
    """Send the warnings of libraries (urllib3 retries, botocore) through ``logger``.

    Their lines then get the same secret masking and reach the admin log; and
    they no longer propagate to whatever the host process configured on the
    root logger, where a retried URL's query string would be printed as is.
    """
    with _libraries_logging_to(names, list(logger.handlers), logging.WARNING):
        yield


@contextmanager
def library_logs_silenced(*names: str) -> Iterator[None]:
    """Drop the log lines of libraries whose lines may quote a URL (urllib3 names the URL it failed on).

    For a program whose own lines already say what happened, field by field;
    the lines also stop reaching whatever the host process configured.
    """
    with _libraries_logging_to(names, [logging.NullHandler()], logging.CRITICAL + 1):
        yield


def close_pod_logger(logger: logging.Logger) -> None:
    """Flush and close every handler (the file must be complete before upload)."""
    for handler in list(logger.handlers):
        handler.flush()
        if isinstance(handler, logging.FileHandler):
            handler.close()
        logger.removeHandler(handler)


def flush_pod_logger(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.flush()


# --------------------------------------------------------------------------
# Reporting back to the operator
# --------------------------------------------------------------------------


def write_termination_message(path: Path, payload: Mapping[str, Any], logger: logging.Logger) -> None:
    """Write ``payload`` as JSON where Kubernetes reads the termination message.

    Kubernetes truncates the message at 4096 bytes, which would make it
    unparseable; an oversize message is logged as a warning (the operator then
    falls back to the exit code).
    """
    text = json.dumps(payload, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        logger.warning(
            "termination message is %d bytes, over the Kubernetes limit of %d",
            len(text.encode()),
            TERMINATION_MESSAGE_LIMIT,
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        logger.error("cannot write termination message to %s: %s", path, exc.strerror or exc)


def truncate(text: str, limit: int = 2000) -> str:
    """Keep messages within the termination-message budget."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------
# The workflow document
# --------------------------------------------------------------------------


def load_workflow(path: Path) -> dict[str, Any]:
    """The workflow document the operator mounted (``{"jobId", "stages"}``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PodError(f"cannot read the workflow document WORKFLOW={path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PodError(f"the workflow document {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PodError(f"the workflow document {path} must be a JSON object")
    return document


def first_stage(document: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The stage the pods act on: operator-service sends exactly one."""
    stages = document.get("stages")
    if not isinstance(stages, list) or not stages or not isinstance(stages[0], dict):
        raise PodError(f"the workflow document {path} has no stages[0] object")
    return stages[0]


def job_id(document: Mapping[str, Any], path: Path) -> str:
    """``jobId``, checked because it becomes a storage key / folder name."""
    value = document.get("jobId")
    if not isinstance(value, str) or not value:
        raise PodError(f"the workflow document {path} has no 'jobId' string")
    if "/" in value or "\\" in value or value in (".", "..") or "\x00" in value:
        raise PodError(f"jobId {value!r} is not usable as a path segment")
    return value


def check_did(did: Any, field: str) -> str:
    """``did`` when it is a DID that is safe as a directory name.

    The operator validated it already; this pod writes files named after it,
    so it checks again rather than trust the path it is given.
    """
    if not isinstance(did, str) or not did:
        raise PodError(f"{field} must be a DID string, got {did!r}")
    if "/" in did or "\\" in did or ".." in did or "\x00" in did or not _DID_RE.match(did):
        raise PodError(f"{field} {did!r} is not a valid DID (did:<method>:<id>, no '/' or '..')")
    return did


def environ() -> dict[str, str]:
    """A snapshot of the process environment (functions take a mapping, for tests)."""
    return dict(os.environ)
