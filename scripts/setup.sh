#!/usr/bin/env bash
# Create .venv and install trisolve with every extra needed for the demo and the tests.
# torch is pinned first to the CPU build (2.13.0) so that `torch>=2.1` does not pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# the reference of tests/test_k_diffusion.py: its sampling.py only (tests/k_diffusion_ref.py); --no-deps because its
# requirements (torchvision, clip, wandb, kornia, ...) are for training and would replace the CPU torch build
.venv/bin/python -m pip install -q --no-deps "k-diffusion==0.1.1.post1"
