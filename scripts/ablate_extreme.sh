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
# the healer extreme_90 had when this ablation ran: batch 32, 30 epochs, lr 3.2e-3 (`lr`, but on the lr lever)
common=(output_root="$root" experiment=extreme_90 healer.batch_size=32 healer.epochs=30 seed=0,1,2
        eval.max_images=2000 eval.speed=false)
lr=healer.lr=3.2e-3
levers=("${common[@]}" pruner=sparsegpt)

"$starfish" run -m "${levers[@]}" "$lr" "$@"                                   # the healer on SparseGPT's masks
"$starfish" run -m "${levers[@]}" healer.lr=6e-4 "$@"                    # the reference learning rate
"$starfish" run -m "${levers[@]}" healer.augment=[flip,shift] "$lr" "$@"       # views, teacher recomputed
"$starfish" run -m "${levers[@]}" healer.augment=[mixup] "$lr" "$@"
"$starfish" run -m "${levers[@]}" 'healer.schedule=[0.5,0.75]' "$lr" "$@"     # gradual 50 → 75 → 90%
"$starfish" run -m "${levers[@]}" 'healer.train=[pruned_weights,norms,biases]' "$lr" "$@"
"$starfish" run -m "${levers[@]}" healer.kd_weight=0.1 "$lr" "$@"
"$starfish" run -m "${levers[@]}" healer.loss=mse "$lr" "$@"
"$starfish" run -m "${common[@]}" pruner=wanda,magnitude "$lr" "$@"           # other masks
"$starfish" run -m "${common[@]}" pruner=magnitude healer.kd_weight=0.1 "$lr" "$@"
"$starfish" run -m "${common[@]}" pruner=wanda pruner.allocation=owl pruner.allocation_spread=0.02 "$lr" "$@"

# batch size and learning rate at the reference recipe's 10-epoch budget on magnitude's masks (seed 0;
# the chosen setting, batch 8 at 7 epochs, also seeds 1 and 2): how extreme_90's healer was found
screen=(output_root="$root" experiment=extreme_90 eval.max_images=2000 eval.speed=false)
"$starfish" run -m "${screen[@]}" seed=0 healer.epochs=10 healer.batch_size=8,16 healer.lr=2.4e-3,3.2e-3,4.8e-3,6.4e-3 "$@"
"$starfish" run -m "${screen[@]}" seed=0 healer.epochs=10 healer.batch_size=16 healer.lr=9.6e-3,1.28e-2 "$@"
"$starfish" run -m "${screen[@]}" seed=0 healer.epochs=10 healer.batch_size=32 healer.lr=3.2e-3,4.8e-3,6.4e-3 "$@"
"$starfish" run -m "${screen[@]}" seed=0 healer.epochs=7 healer.batch_size=8 healer.lr=6.4e-3 "$@"
"$starfish" run -m "${screen[@]}" seed=0,1,2 healer.epochs=7 healer.batch_size=8 healer.lr=9.6e-3,1.28e-2 "$@"

"$starfish" report "$root"
