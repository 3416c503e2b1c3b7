#!/usr/bin/env bash
# The published comparison on the embedded reference model (240 unlabeled calibration images):
# pruners × sparsity × healers × 3 seeds, plus a healing-budget sweep at 90%, then the summary.
# Finished runs are skipped, so an interrupted comparison resumes where it stopped.
# Usage: scripts/compare_healers.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/compare}
shift || true
starfish=${STARFISH:-starfish}

"$starfish" run -m output_root="$root" \
    pruner=magnitude,wanda,sparsegpt pruner.sparsity=0.5,0.75,0.9 \
    healer=none,kd,norm,starfish seed=0,1,2 "$@"

# Budget: 240 images make the reference recipe only 80 steps; what do 3× and 10× buy?
"$starfish" run -m output_root="$root" \
    pruner=wanda pruner.sparsity=0.9 healer=starfish,kd healer.epochs=30,100 seed=0,1,2 "$@"

"$starfish" report "$root/default"
"${PYTHON:-python}" "$(dirname "$0")/update_readme_results.py" "$root/default"
