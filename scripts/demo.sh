#!/usr/bin/env bash
# Sets up .venv and runs the sample Workflow end to end on the embedded cluster
# (operator-engine demo): real data in, real results out, no Kubernetes needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh requirements_dev_extra.txt   # the runtime set and the [dev] extra (the embedded cluster)
exec .venv/bin/operator-engine demo "$@"
