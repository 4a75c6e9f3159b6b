"""Logging: every line through structlog, as JSON for an aggregator or as console text for a person.

kopf and the libraries log through the standard library; one
`structlog.stdlib.ProcessorFormatter` renders their records and the
operator's own structlog lines alike, on the root logger's one handler (kopf
installs a handler of its own when `kopf run` starts; `setup` replaces it, so
each line is written once). The fields (documented in the README, "Logs"):

* `timestamp` (ISO 8601, UTC), `level`, `logger`, `event` (the message);
* `workflow` and `stage`, bound while the engine handles one workflow (see
  `bound`), so every line written meanwhile carries them, the Kubernetes
  client's included; kopf's lines about a Workflow or one of its Jobs get
  them from the object kopf names (`kind`, `namespace`, `name`);
* whatever a log call adds (`shape`, ...), `exception` for a traceback.

A processor drops values whose key names a secret, so a log call cannot leak
one by accident, and the Kubernetes client is never heard below INFO (its
DEBUG lines are whole response bodies, secrets included), whatever LOG_LEVEL
or a LOG_CFG file says.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import logging.config
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import structlog
import yaml
from structlog.typing import EventDict

from operator_engine.facts import STAGES, child_names

SECRET_KEYS = frozenset(
    {
        "secret",
        "private_key",
        "OPERATOR_PRIVATE_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "IPFS_API_KEY",
        "IPFS_API_CLIENT",
        "signature",
        "payload",
    }
)


def _redact(_: Any, __: str, event: EventDict) -> EventDict:
    for key in SECRET_KEYS & event.keys():
        event[key] = "***"
    return event


@functools.cache
def _job_suffixes() -> dict[str, str]:
    """Job name suffix -> stage ("-configure-job" -> "configure"), from the one definition of the names."""
    names = child_names("")
    return {names[stage]: stage for stage in STAGES}


def _kopf_object(_: Any, __: str, event: EventDict) -> EventDict:
    """kopf's per-object lines carry the object in the record (`k8s_ref`): make it fields.

    A line about a Workflow names it as `workflow`; one about a stage Job
    names its workflow and stage (the Job's name is `<workflow>-<stage>-job`).
    """
    record = event.get("_record")
    ref = getattr(record, "k8s_ref", None)
    if not isinstance(ref, dict):
        return event
    kind, name = ref.get("kind"), ref.get("name")
    for key, value in (("kind", kind), ("namespace", ref.get("namespace")), ("name", name)):
        if value:
            event.setdefault(key, value)
    if kind == "WorkFlow" and name:
        event.setdefault("workflow", name)
    elif kind == "Job" and isinstance(name, str):
        for suffix, stage in _job_suffixes().items():
            if name.endswith(suffix) and len(name) > len(suffix):
                event.setdefault("workflow", name[: -len(suffix)])
                event.setdefault("stage", stage)
                break
    return event


def _timestamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """When the line was logged (a standard library record's own time: the same in every handler's output)."""
    record = event.get("_record")
    moment = record.created if isinstance(record, logging.LogRecord) else time.time()
    event.setdefault(
        "timestamp", datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat().replace("+00:00", "Z")
    )
    return event


#: Run on every line, the operator's own and the standard library's (kopf, the libraries).
SHARED_PROCESSORS: tuple[Any, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    _timestamp,
    _redact,
)


#: The fields a JSON line starts with, in this order (the rest follow as logged).
LEADING_FIELDS = ("timestamp", "level", "logger", "event", "workflow", "stage")


def _leading_fields_first(_: Any, __: str, event: EventDict) -> EventDict:
    return {**{key: event[key] for key in LEADING_FIELDS if key in event}, **event}


def _formatter(renderer: Any, *, extra: tuple[Any, ...] = ()) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[_kopf_object, structlog.stdlib.ProcessorFormatter.remove_processors_meta, *extra, renderer],
        foreign_pre_chain=list(SHARED_PROCESSORS),
    )


def json_formatter() -> logging.Formatter:
    """One JSON object per line.

    Usable from a LOG_CFG file: `formatters: {json: {(): operator_engine.logs.json_formatter}}`.
    """
    # format_exc_info: the traceback as plain text in `exception`, without the
    # frames' local variables (a Workflow body, the configuration's keys).
    return _formatter(
        structlog.processors.JSONRenderer(sort_keys=False),
        extra=(structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info, _leading_fields_first),
    )


def console_formatter(colors: bool = False) -> logging.Formatter:
    """Lines for a person at a terminal. Usable from a LOG_CFG file like `json_formatter`."""
    # Plain tracebacks, whatever is installed: with `rich` or `better-exceptions`
    # present, structlog would print each frame's local variables.
    return _formatter(structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback))


def default_format(stream: TextIO) -> str:
    """LOG_FORMAT unset: console lines for a person at a terminal, JSON lines for everything else."""
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


#: Loggers never heard below INFO, whatever LOG_LEVEL or a LOG_CFG file says: at
#: DEBUG the kubernetes clients log whole response bodies, and those carry
#: spec.secret (Workflows), the Secrets' values and the input URLs (ConfigMaps).
CLAMPED_LOGGERS = ("kubernetes", "kubernetes_asyncio")


def _clamped(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in CLAMPED_LOGGERS)


class _Clamp(logging.Filter):
    """Drops records below INFO from the clamped loggers.

    Levels alone cannot hold the line: a LOG_CFG may set `kubernetes.client.rest`
    to DEBUG explicitly, or attach a handler of its own there. So the filter sits
    on each clamped logger (records are dropped where they are made) and on every
    handler (records of a clamped logger created later, propagating up).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or not _clamped(record.name)


_CLAMP = _Clamp()


def _apply_clamp() -> None:
    """Run after any configuration: the clamp wins over the levels and handlers it set."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(_CLAMP)  # a no-op when already there
        if _clamped(logger.name):
            logger.addFilter(_CLAMP)
            if logger.level != logging.NOTSET and logger.level < logging.INFO:
                logger.setLevel(logging.INFO)
    for name in CLAMPED_LOGGERS:
        top = logging.getLogger(name)
        top.addFilter(_CLAMP)
        top.setLevel(max(logging.INFO, top.getEffectiveLevel()))


def setup(
    level: str = "INFO", config_file: str | None = None, log_format: str | None = None, stream: TextIO | None = None
) -> None:
    """Configure the process's logging: LOG_LEVEL, LOG_FORMAT, then LOG_CFG on top; idempotent.

    The root logger gets one handler on stderr with our formatter, replacing
    any it had (kopf's own, when `kopf run` configured it). A LOG_CFG file is
    applied after that, as `logging.config.dictConfig`: what it names wins (a
    `root` entry replaces the root's handler and level), what it leaves out
    stays as set here. Loggers that exist already stay enabled unless the file
    says `disable_existing_loggers: true` (the standard library's default would
    silence kopf and the operator). A file dictConfig refuses raises ConfigError
    naming LOG_CFG.
    """
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    stream = stream or sys.stderr  # another stream: an operator run inside another program (the demo)
    chosen = log_format or default_format(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        json_formatter()
        if chosen == "json"
        else console_formatter(colors=stream.isatty() and not os.environ.get("NO_COLOR"))
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # Python's warnings are log lines too (logger `py.warnings`)
    if config_file:
        _apply_file(config_file)
    _apply_clamp()


def _apply_file(config_file: str) -> None:
    """LOG_CFG: a dictConfig YAML file; one that cannot be applied is a configuration error naming LOG_CFG."""
    from operator_engine.config import ConfigError

    try:
        settings = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        if not isinstance(settings, dict):
            raise ValueError("not a YAML mapping")
        settings.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(settings)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, TypeError, AttributeError, ImportError) as exc:
        problem = " ".join(str(exc).splitlines())[:300] or type(exc).__name__
        raise ConfigError(
            [f"LOG_CFG={config_file!r}: not a usable logging configuration (logging.config.dictConfig): {problem}"]
        ) from None


def get(name: str = "operator-engine") -> Any:
    return structlog.get_logger(name)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Within the block, every line of this task (and of tasks and threads it starts) carries `fields`.

    Starts from no bound field at all and puts back what was bound before on
    the way out, whatever was bound inside (`bind`): one workflow's name or
    stage never sticks to the next line of a task that serves many.
    """
    saved = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**fields)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


def bind(**fields: Any) -> None:
    """Add fields to the current `bound` block's lines (e.g. the stage, once the status is read)."""
    structlog.contextvars.bind_contextvars(**fields)
