#!/usr/bin/env bash
# The test suite on a fresh machine: install, then run pytest (tiny configs, one thread).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg
.venv/bin/python -m pytest -p no:cacheprovider "$@"
