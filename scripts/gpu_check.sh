#!/usr/bin/env bash
# Exercise the CUDA path (bf16 healing, throughput, 2:4 kernels) on a GPU machine; figures go to OUT.
# Usage: scripts/gpu_check.sh OUT
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT}
python=${PYTHON:-python}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia_smi.csv" || true
"$python" scripts/gpu_check.py "$out" 2>&1 | tee "$out/gpu_check.log"
"$python" scripts/bench_heal.py --model deit_base_patch16_224 --images 256 --device cuda 2>&1 | tee "$out/bench_heal.txt"
"$python" scripts/bench_eval.py --model deit_base_patch16_224 --images 1024 --device cuda 2>&1 | tee "$out/bench_eval.txt"
"$python" scripts/scale_rehearsal.py --device cuda --calib 500 --eval 5000 --batch-size 128 --folder "$out/imagenet_like" \
    --out "$out/rehearsal" 2>&1 | tail -n 12 | tee "$out/rehearsal.txt"
"$python" scripts/scale_rehearsal_lm.py --device cuda --calib 16 --seq-len 512 --eval 4 --folder "$out/llama_3b" \
    --out "$out/rehearsal_lm" 2>&1 | tail -n 12 | tee "$out/rehearsal_lm.txt"
