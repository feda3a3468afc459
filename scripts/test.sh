#!/usr/bin/env bash
# The test suite: fast unit tests plus the end-to-end ones (marked e2e) that run real
# Flower simulations and SuperLink/SuperNode processes on 127.0.0.1.
# `bash scripts/test.sh -m "not e2e"` runs only the fast ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --os-packages
exec .venv/bin/python -m pytest "$@"
