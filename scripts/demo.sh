#!/usr/bin/env bash
# Sets up .venv and shows the sample Workflow going through the operator.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh requirements.txt
exec .venv/bin/operator-engine render k8s_install/workflow-1.yaml
