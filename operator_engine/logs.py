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
        return
    handler = logging.StreamHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer(colors=False)],
        foreign_pre_chain=shared,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # At DEBUG the kubernetes client logs whole response bodies: Workflows carry
    # spec.secret and Secrets their values. Never below INFO.
    logging.getLogger("kubernetes").setLevel(max(logging.INFO, root.level))


def get(name: str = "operator-engine") -> Any:
    return structlog.get_logger(name)
