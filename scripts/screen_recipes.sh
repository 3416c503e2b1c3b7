#!/usr/bin/env bash
# Issue 26's screen for a healer recipe per pattern on the embedded reference model: seed 0, the first
# 2,000 test images (dense 89.30% there), 240 unlabeled calibration images. Budgets are the reference
# recipe's (STARFISH, batch 32, lr 6e-4) 10- or 30-epoch wall times; a step on 8 images costs about
# 1.35× per image what one on 32 does on this CPU, so batch 8 gets 7 and 20 epochs.
#   structured heads = MLP = 50%: batch × learning rate, then the levers one at a time, then on the fit
#   2:4: the reference recipe, longer, at higher learning rates, and extreme_90's healer
#   95% unstructured: extreme_90's healer with a higher learning rate, logit KD, reshuffling, branch states
#   75% unstructured and structured at the 10-epoch time: batch 8 against the reference
# `starfish report` then tabulates every run. Finished runs are skipped, so an interrupted screen resumes.
# Usage: scripts/screen_recipes.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/screen_recipes}
shift || true
starfish=${STARFISH:-starfish}
common=(output_root="$root" eval.max_images=2000 eval.speed=false seed=0)

structured=("${common[@]}" healer=starfish pruner=structured pruner.heads=0.5 pruner.mlp=0.5)
"$starfish" run -m "${structured[@]}" healer.batch_size=32 healer.epochs=30 healer.lr=3e-4,6e-4,1.2e-3,2.4e-3 "$@"
"$starfish" run -m "${structured[@]}" healer.batch_size=8 healer.epochs=20 healer.lr=1.5e-4,3e-4,6e-4,1.2e-3 "$@"
"$starfish" run -m "${structured[@]}" experiment=extreme_90 '~pruner.sparsity' healer.epochs=20 "$@"
best=("${structured[@]}" healer.batch_size=32 healer.lr=1.2e-3)
"$starfish" run -m "${best[@]}" healer.epochs=23 'healer.augment=[flip,shift],[mixup]' "$@"  # views: the teacher recomputed
"$starfish" run -m "${best[@]}" healer.epochs=30 healer.kd_weight=0.1,1.0 "$@"
"$starfish" run -m "${best[@]}" healer.epochs=30 'healer.train=[pruned_weights,norms,biases]' "$@"
"$starfish" run -m "${best[@]}" healer.epochs=30 healer.loss=mse "$@"
"$starfish" run -m "${best[@]}" healer.epochs=30 pruner.scope=global "$@"
"$starfish" run -m "${best[@]}" healer.epochs=30 pruner.compensate=least_squares pruner.criterion=fluctuation,output "$@"
least_squares=("${best[@]}" healer.epochs=30 pruner.compensate=least_squares)  # then on top of the fit
"$starfish" run -m "${least_squares[@]}" 'healer.states=[blocks,attn,mlp]' "$@"
"$starfish" run -m "${least_squares[@]}" healer.reshuffle=true "$@"
"$starfish" run -m "${structured[@]}" pruner.compensate=least_squares healer.batch_size=8 healer.epochs=20 healer.lr=1.2e-3,2.4e-3,4.8e-3 "$@"

"$starfish" run -m "${common[@]}" healer=starfish pruner=wanda,magnitude pruner.pattern=2:4 healer.epochs=10,30 "$@"
"$starfish" run -m "${common[@]}" healer=starfish pruner=wanda,magnitude pruner.pattern=2:4 healer.epochs=30 healer.lr=1.2e-3,2.4e-3 "$@"
"$starfish" run -m "${common[@]}" experiment=extreme_90 pruner=wanda,magnitude pruner.pattern=2:4 healer.epochs=7,20 "$@"

high=("${common[@]}" experiment=extreme_90 pruner.sparsity=0.95 healer.epochs=20)
"$starfish" run -m "${high[@]}" healer.lr=9.6e-3,1.92e-2 "$@"
"$starfish" run -m "${high[@]}" healer.kd_weight=0.1 "$@"
"$starfish" run -m "${high[@]}" healer.reshuffle=true "$@"
"$starfish" run -m "${high[@]}" 'healer.states=[blocks,attn,mlp]' "$@"
"$starfish" run -m "${high[@]}" pruner=wanda,sparsegpt "$@"

"$starfish" run -m "${common[@]}" healer=starfish healer.recipe=reference pruner=wanda,magnitude pruner.sparsity=0.75 "$@"
"$starfish" run -m "${common[@]}" healer=starfish pruner=wanda,magnitude pruner.sparsity=0.75 healer.batch_size=8 healer.epochs=7 healer.lr=2.4e-3,9.6e-3 "$@"
"$starfish" run -m "${structured[@]}" healer.recipe=reference healer.lr=1.2e-3,2.4e-3 "$@"
"$starfish" run -m "${structured[@]}" healer.batch_size=8 healer.epochs=7 healer.lr=6e-4,1.2e-3 "$@"

"$starfish" report "$root"
