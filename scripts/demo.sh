#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the demo (writes demo_out/report.md + PNGs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/unimm demo "$@"
