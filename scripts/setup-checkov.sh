#!/usr/bin/env bash
# Creates .venv-checkov with checkov (requirements_checkov.txt), the manifest
# scanner the test suite runs. A venv of its own: checkov pins an older boto3
# than the operator's. Safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv-checkov/bin/python ]; then
    echo "setting up .venv-checkov (checkov, for the manifest scan; the first run takes a minute)..."
    "$PYTHON" -m venv .venv-checkov
fi
if ! .venv-checkov/bin/python -m pip install --disable-pip-version-check -r requirements_checkov.txt \
        > .venv-checkov/setup.log 2>&1; then
    cat .venv-checkov/setup.log >&2
    echo "checkov setup failed: see the pip output above" >&2
    exit 1
fi
