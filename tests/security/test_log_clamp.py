"""The clamp on the Kubernetes client's logging holds whatever a LOG_CFG file says (docs/SECURITY.md §8).

At DEBUG ``kubernetes.client.rest`` logs whole response bodies: Workflows with
spec.secret, Secrets with their values, ConfigMaps with the input URLs. These
tests configure logging as the operator does (``logs.setup``) and log through
the real loggers; test_no_secret_in_logs.py does the same end to end.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from operator_engine import logs

BODY = "response body: {'spec': {'secret': 'clamp-test-secret'}}"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup configures the process's logging: put back what pytest had."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    loggers = {
        name: (lg.level, list(lg.handlers), lg.propagate, list(lg.filters), lg.disabled)
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and name in loggers:
            lg.level, lg.handlers, lg.propagate, lg.filters, lg.disabled = (
                loggers[name][0],
                loggers[name][1],
                loggers[name][2],
                loggers[name][3],
                loggers[name][4],
            )
        elif isinstance(lg, logging.Logger):
            lg.handlers, lg.filters, lg.level, lg.propagate = [], [], logging.NOTSET, True


def write_config(tmp_path: Path, loggers: dict[str, dict[str, object]]) -> Path:
    path = tmp_path / "log.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"capture": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
                "root": {"level": "DEBUG", "handlers": ["capture"]},
                "loggers": loggers,
            }
        )
    )
    return path


def captured_by_every_handler() -> io.StringIO:
    """Point every handler configured so far at one buffer (the config names sys.stdout)."""
    buffer = io.StringIO()
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(buffer)
    return buffer


@pytest.mark.parametrize(
    "loggers",
    [
        {"kubernetes": {"level": "DEBUG"}},
        {"kubernetes.client.rest": {"level": "DEBUG"}},
        {"kubernetes.client.rest": {"level": "DEBUG", "handlers": ["capture"], "propagate": False}},
    ],
    ids=["kubernetes-DEBUG", "rest-DEBUG", "rest-own-handler"],
)
def test_a_log_cfg_cannot_make_the_kubernetes_client_log_bodies(
    loggers: dict[str, dict[str, object]], tmp_path: Path, restore_logging: None
) -> None:
    logs.setup("DEBUG", str(write_config(tmp_path, loggers)))
    buffer = captured_by_every_handler()

    logging.getLogger("kubernetes.client.rest").debug(BODY)
    logging.getLogger("kubernetes.client.rest").info("an INFO line still passes")
    logging.getLogger("operator-engine.test").debug("other DEBUG lines still pass")

    out = buffer.getvalue()
    assert "clamp-test-secret" not in out
    assert "an INFO line still passes" in out
    assert "other DEBUG lines still pass" in out


def test_without_a_log_cfg_debug_keeps_the_kubernetes_client_at_info(restore_logging: None) -> None:
    logs.setup("DEBUG")
    buffer = captured_by_every_handler()

    logging.getLogger("kubernetes.client.rest").debug(BODY)
    logging.getLogger("kubernetes.config.later_module").debug(BODY)  # a logger made after setup

    assert "clamp-test-secret" not in buffer.getvalue()
