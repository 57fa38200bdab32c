#!/usr/bin/env bash
# The one command for a GPU machine (DEVELOPERS.md): tools/gpu_run.py, run from the
# repository root with $PYTHON, else this checkout's .venv/bin/python, else python3 (the GPU
# machine's, which has jax with CUDA).
#   tools/gpu_run.sh --out=DIR [--budget_s=540] [--dry_run] [--archive=FILE.tar.gz]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" tools/gpu_run.py "$@"
