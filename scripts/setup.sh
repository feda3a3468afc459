#!/usr/bin/env bash
# Create .venv and install fedpriv into it. Safe to re-run: it reinstalls only when
# pyproject.toml changed. PyTorch comes first and pinned, so that no resolver pulls a
# different (multi-GB) build: 2.13.0 is a CPU wheel on CPU machines set up with one,
# and PyPI's default (CUDA) build on GPU nodes. Override with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.fedpriv-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "fedpriv: installing into .venv (first run takes a few minutes)" >&2
  python -m pip install -q --upgrade pip
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
