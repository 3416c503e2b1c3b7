#!/usr/bin/env bash
# The levers for extreme sparsity, one at a time on top of experiment=extreme_90's healer (STARFISH
# at lr 3.2e-3 for 30 epochs) on SparseGPT's 90% masks, 3 seeds each, first 2,000 test images: the
# reference learning rate, consistent augmented views (flip+shift; mixup), gradual pruning,
# training norms and biases too, a logit-KD term, the normalized-MSE distance; then the masks
# (magnitude, with and without the KD term; Wanda uniform and OWL-allocated), where magnitude won
# and became the recipe's pruner. `starfish report` gives the ablation table.
# Finished runs are skipped, so an interrupted ablation resumes where it stopped.
# Usage: scripts/ablate_extreme.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/ablation}
shift || true
starfish=${STARFISH:-starfish}
common=(output_root="$root" experiment=extreme_90 seed=0,1,2 eval.max_images=2000 eval.speed=false)
levers=("${common[@]}" pruner=sparsegpt)

"$starfish" run -m "${levers[@]}" "$@"                                   # the healer on SparseGPT's masks
"$starfish" run -m "${levers[@]}" healer.lr=6e-4 "$@"                    # the reference learning rate
"$starfish" run -m "${levers[@]}" healer.augment=[flip,shift] "$@"       # views, teacher recomputed
"$starfish" run -m "${levers[@]}" healer.augment=[mixup] "$@"
"$starfish" run -m "${levers[@]}" 'healer.schedule=[0.5,0.75]' "$@"     # gradual 50 → 75 → 90%
"$starfish" run -m "${levers[@]}" 'healer.train=[pruned_weights,norms,biases]' "$@"
"$starfish" run -m "${levers[@]}" healer.kd_weight=0.1 "$@"
"$starfish" run -m "${levers[@]}" healer.loss=mse "$@"
"$starfish" run -m "${common[@]}" pruner=wanda,magnitude "$@"           # other masks
"$starfish" run -m "${common[@]}" pruner=magnitude healer.kd_weight=0.1 "$@"
"$starfish" run -m "${common[@]}" pruner=wanda pruner.allocation=owl pruner.allocation_spread=0.02 "$@"

"$starfish" report "$root"
