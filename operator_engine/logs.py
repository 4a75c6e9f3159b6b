"""Logging: structlog lines a person can follow, with LOG_LEVEL and LOG_CFG honoured.

kopf and the libraries log through the standard library; structlog renders
both the same way. A processor drops values whose key names a secret, so a
log call cannot leak one by accident.
"""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path
from typing import Any

import structlog
import yaml

SECRET_KEYS = frozenset({"secret", "private_key", "OPERATOR_PRIVATE_KEY", "AWS_SECRET_ACCESS_KEY",
                         "AWS_ACCESS_KEY_ID", "IPFS_API_KEY", "IPFS_API_CLIENT", "signature", "payload"})


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in SECRET_KEYS & event.keys():
        event[key] = "***"
    return event


#: Loggers never heard below INFO, whatever LOG_LEVEL or a LOG_CFG file says: at
#: DEBUG the kubernetes client logs whole response bodies, and those carry
#: spec.secret (Workflows), the Secrets' values and the input URLs (ConfigMaps).
CLAMPED_LOGGERS = ("kubernetes",)


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
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
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


def setup(level: str = "INFO", config_file: str | None = None) -> None:
    shared = [structlog.stdlib.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True), _redact]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    if config_file:
        logging.config.dictConfig(yaml.safe_load(Path(config_file).read_text(encoding="utf-8")))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        # Plain tracebacks, whatever is installed: with `rich` or
                        # `better-exceptions` present, structlog would print each frame's
                        # local variables (a Workflow body, the configuration's keys).
                        structlog.dev.ConsoleRenderer(colors=False,
                                                      exception_formatter=structlog.dev.plain_traceback)],
            foreign_pre_chain=shared,
        ))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(level)
        for noisy in ("urllib3", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _apply_clamp()


def get(name: str = "operator-engine") -> Any:
    return structlog.get_logger(name)
