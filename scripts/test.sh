#!/usr/bin/env bash
# The test suite on a fresh machine: install, then run pytest (tiny configs, one thread).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg
# two workers by default (CI has 2 cores; every test runs one thread), one test file per worker
# so that a file's module fixtures are built once; UNIMM_TEST_WORKERS=0 runs in this process
W=${UNIMM_TEST_WORKERS:-2}
if [ "$W" = 0 ]; then
    .venv/bin/python -m pytest -p no:cacheprovider "$@"
else
    .venv/bin/python -m pytest -p no:cacheprovider -n "$W" --dist loadfile "$@"
fi
