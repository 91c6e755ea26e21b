#!/usr/bin/env bash
# Create a second virtual environment with the oldest diffusers release trisolve supports
# (0.35) for the parity test subset (`pytest -m parity`). transformers stays on 4.x, which
# diffusers 0.35 needs. The project itself is installed with --no-deps so that pip does not
# upgrade diffusers to the newest release; the few test dependencies are listed here. ftfy:
# diffusers 0.35's WanPipeline cleans string prompts with it unconditionally (later releases
# only when it is installed).
# Usage: bash scripts/setup_oldest.sh [VENV_DIR]   (default: .venv-oldest)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${1:-.venv-oldest}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q "diffusers==0.35.*" "transformers>=4.38,<5" "safetensors>=0.4" tqdm \
    "numpy>=1.24" "array-api-compat>=1.6" ftfy "pytest>=7" "hypothesis>=6.80" "scipy>=1.10" "array-api-strict>=2.0"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -c "import diffusers, transformers; print('oldest env: diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
