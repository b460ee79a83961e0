#!/usr/bin/env bash
# The test command: sets up .venv on a fresh machine, then runs the whole suite (CPU, no network).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k tokenizer -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
python -m pytest -q "$@"
