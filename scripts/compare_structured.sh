#!/usr/bin/env bash
# The structured trade-off on the embedded reference model: whole heads and MLP neurons removed
# (25% and 50% of each) beside unstructured Wanda (50%, 75%) and 2:4, each healed with none, kd
# and starfish, 3 seeds; every run measures images/s against dense in its own process (eval.speed),
# and `starfish report` plots healed top-1 against that speed (accuracy_vs_speed.png).
# Finished runs are skipped, so an interrupted comparison resumes where it stopped.
# Usage: scripts/compare_structured.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/structured}
shift || true
starfish=${STARFISH:-starfish}
common=(output_root="$root" seed=0,1,2 eval.max_images=2000)
# STARFISH with the reference recipe on every pattern (by default structured models heal with their own)
for healers in "healer=none,kd" "healer=starfish healer.recipe=reference"; do
    read -ra healer <<< "$healers"
    for fraction in 0.25 0.5; do
        "$starfish" run -m "${common[@]}" "${healer[@]}" pruner=structured pruner.heads=$fraction pruner.mlp=$fraction "$@"
    done
    "$starfish" run -m "${common[@]}" "${healer[@]}" pruner=wanda pruner.sparsity=0.5,0.75 "$@"
    "$starfish" run -m "${common[@]}" "${healer[@]}" pruner=wanda pruner.pattern=2:4 "$@"
done

"$starfish" report "$root/default"
