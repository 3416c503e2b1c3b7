#!/usr/bin/env bash
# The language-model comparison on the embedded reference LM (tiny Llama on fortunes, 128 calibration
# windows of 128 tokens): Wanda at 50%, 70% and 2:4, magnitude and SparseGPT at 50% and 70%, each
# healed with none, kd, norm and starfish, 3 seeds; then the summary (perplexity) into the README.
# Finished runs are skipped, so an interrupted comparison resumes where it stopped.
# Usage: scripts/compare_lm.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/lm}
shift || true
starfish=${STARFISH:-starfish}
common=(output_root="$root" model=lm_reference seed=0,1,2 eval.speed=false)
# STARFISH end to end with the reference recipe, as published (language models now default to the block-wise lm recipe)
for healers in "healer=none,kd,norm" "healer=starfish healer.recipe=reference"; do
    # shellcheck disable=SC2086
    "$starfish" run -m "${common[@]}" $healers pruner=wanda pruner.sparsity=0.5,0.7 "$@"
    # shellcheck disable=SC2086
    "$starfish" run -m "${common[@]}" $healers pruner=wanda pruner.pattern=2:4 "$@"
    # shellcheck disable=SC2086
    "$starfish" run -m "${common[@]}" $healers pruner=magnitude,sparsegpt pruner.sparsity=0.5,0.7 "$@"
done

"$starfish" report "$root/default"
"${PYTHON:-python}" "$(dirname "$0")/update_readme_results.py" "$root/default" lm
