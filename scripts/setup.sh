#!/usr/bin/env bash
# Create .venv and install fedpriv into it. Safe to re-run: it reinstalls only when
# pyproject.toml changed. PyTorch comes first and pinned, so that no resolver pulls a
# different (multi-GB) build: 2.13.0 is a CPU wheel on CPU machines set up with one,
# and PyPI's default (CUDA) build on GPU nodes. Override with TORCH_SPEC=...
#
# `--os-packages` also installs the OS packages the coordinator and the tests use:
# HAProxy (the gateway `fedpriv server` puts in front of the SuperLink) and Chromium
# (the audit report's browser test). It needs root and apt-get; elsewhere it says what
# to install (and the browser test is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
os_packages=()
[ "${1:-}" = "--os-packages" ] && os_packages=(haproxy chromium)
missing=()
for package in "${os_packages[@]}"; do
  command -v "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fedpriv: installing ${missing[*]} (apt-get)" >&2
    apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 "$@"; }
    { apt_get update && apt_get install -y --no-install-recommends "${missing[@]}"; } \
      >/dev/null || echo "fedpriv: ${missing[*]} could not be installed" >&2
  else
    echo "fedpriv: ${missing[*]} not found; install it from your OS packages" \
         "(e.g. sudo apt-get install ${missing[*]})" >&2
  fi
fi
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
