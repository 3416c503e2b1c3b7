#!/usr/bin/env bash
# The published comparison on the embedded reference model (240 unlabeled calibration images):
# pruners × sparsity × healers × 3 seeds, plus a healing-budget sweep at 90%, then the summary.
# Finished runs are skipped, so an interrupted comparison resumes where it stopped.
# Usage: scripts/compare_healers.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/compare}
shift || true
starfish=${STARFISH:-starfish}

# STARFISH with the reference recipe at every sparsity (by default 90% heals with the extreme recipe)
grid=(output_root="$root" pruner=magnitude,wanda,sparsegpt pruner.sparsity=0.5,0.75,0.9 seed=0,1,2)
"$starfish" run -m "${grid[@]}" healer=none,kd,norm "$@"
"$starfish" run -m "${grid[@]}" healer=starfish healer.recipe=reference "$@"

# Budget: 240 images make the reference recipe only 80 steps; what do 3× and 10× buy?
budget=(output_root="$root" pruner=wanda pruner.sparsity=0.9 healer.epochs=30,100 seed=0,1,2)
"$starfish" run -m "${budget[@]}" healer=starfish healer.recipe=reference "$@"
"$starfish" run -m "${budget[@]}" healer=kd "$@"

"$starfish" report "$root/default"
"${PYTHON:-python}" "$(dirname "$0")/update_readme_results.py" "$root/default"
