"""The kopf entry module: `kopf run --standalone operator_engine/operator_main.py`.

Importing it checks the configuration and the templates, so a bad variable
stops the operator at start with a message naming it (CONTRACT §3).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kopf

from operator_engine import config as _config
from operator_engine import render as _render

try:
    CONFIG = _config.load()
    _render.check_templates(Path(CONFIG.TEMPLATES_DIR))
except _config.ConfigError as _exc:
    print(f"operator-engine: configuration error: {'; '.join(_exc.problems)}", file=sys.stderr)
    raise SystemExit(78) from None


@kopf.on.startup()
def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The operator is namespaced (a Role, not cluster-admin): it must not list
    # namespaces or CRDs cluster-wide, which kopf's scanning would try.
    settings.scanning.disabled = True
    settings.posting.level = 20  # INFO events on the Workflow, for `kubectl describe`
