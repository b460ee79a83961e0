# Sourced by speedrun.sh and tests/run.sh: make .venv if missing and (re)install the project
# when pyproject.toml changed since the last install. torch is pinned in pyproject.toml, so
# pip takes the local CPU wheel where there is one instead of pulling CUDA wheels.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.nanochat-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing nanochat and its dependencies into .venv (first run takes a minute or two)"
    .venv/bin/python -m pip install --quiet -e '.[dev,hf]'
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
