#!/usr/bin/env bash
# Sets up .venv with the test dependencies and runs the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/foundation -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh requirements_dev.txt
bash scripts/setup-checkov.sh   # checkov, for tests/security/test_checkov.py (a venv of its own)
# Lint and format first: a finding fails the run in seconds, before the long tiers.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Static types of the package (configured in pyproject.toml's [tool.mypy]).
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
