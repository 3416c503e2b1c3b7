#!/usr/bin/env bash
# The language-model grid on the medium embedded LM (lm_medium: 3.3M-parameter Llama on fortunes + the
# Jargon File, 128 calibration windows of 128 tokens): magnitude, Wanda and SparseGPT at 50%, 70% and
# 2:4, and Wanda with OWL's allocation at 70%, each healed with none, norm, kd, starfish (end to end)
# and starfish block-wise (healer.mode=blockwise), 3 seeds; perplexity on the test split. TASKS=1 adds
# two offline zero-shot tasks from it (scripts/make_corpus_tasks.py; the dense model is near chance on
# them, docs/results.md). Two halves run side by side, one core each (PARALLEL=1: one after the other).
# Finished runs are skipped: an interrupted grid resumes. The summary goes into docs/results.md.
# Usage: scripts/compare_lm_medium.sh [output root] [extra overrides...]
set -euo pipefail
root=${1:-outputs/lm_medium}
shift || true
starfish=${STARFISH:-starfish}
here=$(dirname "$0")
mkdir -p "$root"
common=(output_root="$root" model=lm_medium seed=0,1,2 eval.speed=false)
if [ "${TASKS:-0}" = 1 ]; then
    "${PYTHON:-python}" "$here/make_corpus_tasks.py" "$root/tasks" >/dev/null
    common+=("eval.tasks=[fortune_ending,jargon_gloss]" eval.include_path="$(cd "$root/tasks" && pwd)")
fi

setting() {  # every healer on one pruning setting; STARFISH with the reference recipe, as published (language
    # models now default to the block-wise lm recipe)
    "$starfish" run -m "${common[@]}" healer=none,norm,kd "$@"
    "$starfish" run -m "${common[@]}" healer=starfish healer.recipe=reference "$@"
    "$starfish" run -m "${common[@]}" healer=starfish healer.recipe=reference healer.mode=blockwise "$@"
}
first_half() {
    setting pruner=magnitude pruner.sparsity=0.5,0.7 "$@"
    setting pruner=magnitude pruner.pattern=2:4 "$@"
    setting pruner=wanda pruner.sparsity=0.5 "$@"
    setting pruner=wanda pruner.pattern=2:4 "$@"
}
second_half() {
    setting pruner=sparsegpt pruner.sparsity=0.5,0.7 "$@"
    setting pruner=sparsegpt pruner.pattern=2:4 "$@"
    setting pruner=wanda pruner.sparsity=0.7 "$@"
    setting pruner=wanda pruner.sparsity=0.7 pruner.allocation=owl "$@"
}

if [ "${PARALLEL:-2}" = 1 ]; then
    first_half "$@"; second_half "$@"
else
    export OMP_NUM_THREADS=1
    first_half "$@" > "$root/first_half.log" 2>&1 & first=$!
    second_half "$@" > "$root/second_half.log" 2>&1 & second=$!
    wait $first && wait $second
fi

"$starfish" report "$root/default"
"${PYTHON:-python}" "$here/update_readme_results.py" "$root/default" lm_medium
