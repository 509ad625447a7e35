#!/usr/bin/env bash
# Create .venv (if missing) and install genlab with its test extras into it. Idempotent.
# Usage: ./scripts/setup.sh            (PYTHON=python3.12 ./scripts/setup.sh to pick an interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python -c "import genlab, torch; print(f'genlab {genlab.__version__} ready (torch {torch.__version__}, cuda available: {torch.cuda.is_available()})')"
echo "next: source .venv/bin/activate   # then genlab and tensorboard work as the README writes them"
