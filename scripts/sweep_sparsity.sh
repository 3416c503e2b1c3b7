#!/usr/bin/env bash
# The plain shell-loop way to sweep sparsity (the Hydra way: starfish run -m pruner.sparsity=0.5,0.75,0.9).
# Usage: scripts/sweep_sparsity.sh [pruner] [extra overrides...]
set -euo pipefail
pruner=${1:-wanda}
shift || true
for sparsity in 0.5 0.6 0.7 0.75 0.8 0.9; do
    starfish run "pruner=${pruner}" "pruner.sparsity=${sparsity}" "$@"
done
starfish report outputs/default
