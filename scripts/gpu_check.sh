#!/usr/bin/env bash
# One check of ChainForge on a GPU machine (about 8 minutes on one H100/H200, plus the vLLM install
# the first time). Run from a checkout:
#   scripts/gpu_check.sh [OUT]          # default OUT: runs/gpu-check
# It installs the vllm extra if it is absent (GPU_CHECK_NO_INSTALL=1: don't), then measures:
#   sft        bf16 SFT on a random-init Qwen2.5-1.5B shape: tokens/s and MFU (target >= 40 %)
#   grpo-hf    a few GRPO steps generating with transformers: generation share of step time
#   grpo-vllm  the same with vLLM colocated (target <= 50 %)
#   reject     the sampling engine on the same prompts, HF loop vs vLLM (target vLLM >= 5x)
#   fsdp       FSDP save, crash, resume, from_pretrained (only with 2 or more GPUs)
# and prints one table, also written as OUT/gpu_check.json (format: docs/gpu-check.md).
# PYTHON picks the interpreter (default: python3 on PATH); GPU_CHECK_PEAK_TFLOPS sets the GPU's
# dense bf16 peak when its name is not in scripts/gpu_check.py's table.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/gpu-check}"
py="${PYTHON:-python3}"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

if ! "$py" -c 'import vllm' 2>/dev/null; then
  if [[ "${GPU_CHECK_NO_INSTALL:-0}" == "1" ]]; then
    echo "gpu_check: vllm is not installed; its checks are skipped (GPU_CHECK_NO_INSTALL=1)" >&2
  else
    # the extra's version range, read from pyproject.toml (the one place it is written)
    mapfile -t specs < <("$py" -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["vllm"]))')
    echo "gpu_check: installing ${specs[*]} (the vllm extra)" >&2
    "$py" -m pip install "${specs[@]}" || echo "gpu_check: vllm did not install; its checks are skipped" >&2
  fi
fi

mkdir -p "$out"
rm -rf "$out/results"
"$py" scripts/gpu_check.py build "$out"
# Each check runs in its own process and records its own error: one failure never hides the others.
"$py" scripts/gpu_check.py sft "$out" || true
"$py" scripts/gpu_check.py grpo "$out" || true
"$py" scripts/gpu_check.py grpo "$out" --vllm || true
"$py" scripts/gpu_check.py reject "$out" || true
"$py" scripts/gpu_check.py fsdp "$out" || true
"$py" scripts/gpu_check.py report "$out"
echo "gpu_check: wrote $out/gpu_check.json" >&2
