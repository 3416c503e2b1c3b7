#!/usr/bin/env bash
# The map past 90% on the embedded reference model: magnitude masks (the named recipe's) at 90%,
# 95%, 98% and 2:4, healed by the reference recipe (starfish), logit KD (kd) and the named recipe
# (experiment=extreme_90), each at 10 and 30 epochs over 3 seeds and at 100 epochs for seed 0,
# evaluated on the first 2,000 test images. `starfish report` then gives the table, accuracy vs
# sparsity and recovery vs healing wall time. Run nothing else meanwhile: the times are figures.
# Finished runs are skipped, so an interrupted map resumes where it stopped.
# Usage: scripts/extreme_sparsity.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/extreme}
shift || true
starfish=${STARFISH:-starfish}
common=(output_root="$root" eval.max_images=2000 eval.speed=false)

for setting in pruner.sparsity=0.9 pruner.sparsity=0.95 pruner.sparsity=0.98 pruner.pattern=2:4; do
    for budget in "seed=0,1,2 healer.epochs=10,30" "seed=0 healer.epochs=100"; do
        # shellcheck disable=SC2086  # the budget is two overrides
        "$starfish" run -m "${common[@]}" pruner=magnitude "$setting" healer=starfish,kd $budget "$@"
        "$starfish" run -m "${common[@]}" experiment=extreme_90 "$setting" $budget "$@"
    done
done

"$starfish" report "$root"
