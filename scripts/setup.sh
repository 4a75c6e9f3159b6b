#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the project with its pinned dependencies.
# Used by demo.sh and test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv with $("$PYTHON" --version) (the first run takes a minute)..."
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip > .venv/setup.log 2>&1
fi
if ! .venv/bin/python -m pip install --disable-pip-version-check -r "${1:-requirements.txt}" -e . \
        > .venv/setup.log 2>&1; then
    cat .venv/setup.log >&2
    echo "setup failed: see the pip output above" >&2
    exit 1
fi
