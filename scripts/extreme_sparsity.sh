#!/usr/bin/env bash
# The map past 90% on the embedded reference model, on the full test split (10,000 images):
# magnitude masks (the named recipe's) at 90%, 95% and 98%, healed by the reference recipe
# (healer.recipe=reference: batch 32, lr 6e-4) at 10 and 30 epochs and by the named recipe
# (experiment=extreme_90: batch 8, lr 9.6e-3) at 7 and 20 epochs, the same wall times on this CPU
# (a step on 8 images costs about 1.35× an image of a step on 32), seeds 0–2. With FULL=1 also
# logit KD at 10 and 30 epochs, 100 epochs (the named recipe's 67) for seed 0, and 2:4.
# `starfish report` then gives the table, accuracy vs sparsity and recovery vs healing wall time.
# Run nothing else meanwhile: the heal times are figures. Finished runs are skipped, so an
# interrupted map resumes where it stopped.
# Usage: [FULL=1] scripts/extreme_sparsity.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/extreme}
shift || true
starfish=${STARFISH:-starfish}
common=(output_root="$root" eval.speed=false seed=0,1,2)
settings=(pruner.sparsity=0.9 pruner.sparsity=0.95 pruner.sparsity=0.98)
[ "${FULL:-0}" = 1 ] && settings+=(pruner.pattern=2:4)

for setting in "${settings[@]}"; do
    "$starfish" run -m "${common[@]}" pruner=magnitude "$setting" healer=starfish healer.recipe=reference healer.epochs=10,30 "$@"
    "$starfish" run -m "${common[@]}" experiment=extreme_90 "$setting" healer.epochs=7,20 "$@"
    if [ "${FULL:-0}" = 1 ]; then
        "$starfish" run -m "${common[@]}" pruner=magnitude "$setting" healer=kd healer.epochs=10,30 "$@"
        "$starfish" run -m "${common[@]}" seed=0 pruner=magnitude "$setting" healer=starfish healer.recipe=reference healer.epochs=100 "$@"
        "$starfish" run -m "${common[@]}" seed=0 pruner=magnitude "$setting" healer=kd healer.epochs=100 "$@"
        "$starfish" run -m "${common[@]}" seed=0 experiment=extreme_90 "$setting" healer.epochs=67 "$@"
    fi
done

"$starfish" report "$root"
