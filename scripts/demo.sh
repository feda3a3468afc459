#!/usr/bin/env bash
# The main job: a local federated DP fine-tuning of all-MiniLM-L6-v2 on the embedded
# tweets (4 clients, 3 rounds, epsilon 8 per client). Extra flags go to `fedpriv simulate`,
# e.g. `bash scripts/demo.sh --preset full --client-gpus 0.25`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedpriv simulate "$@"
