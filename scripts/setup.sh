#!/usr/bin/env bash
# Create .venv (once) and install unimm into it. On machines without an NVIDIA GPU, torch's
# CPU build (2.13.0) is installed first so that `torch>=2.4` pulls no CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        $PIP install "torch>=2.4"
    else
        $PIP install "torch==2.13.0"
    fi
fi
$PIP install -e ".[${1:-test}]"
# The browser test drives Debian's chromium; install it when we can (root + apt-get), quietly
# skip otherwise (the test then skips with its reason).
if [ "${1:-test}" = test ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver) >/dev/null 2>&1 || echo "setup: could not install chromium" >&2
fi
