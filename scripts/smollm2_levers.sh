#!/usr/bin/env bash
# SmolLM2-135M (model=smollm2_135m): what moves the healed perplexity (issue 35). The default run at Wanda 50% and
# 2:4 over seeds 0-2 (block-wise `lm` recipe, 128 calibration windows of 128 tokens, perplexity on 32 test windows
# of 256 tokens, wordnet_definitions on 200 questions), then the levers at seed 0 and Wanda 50%: the calibration
# size, the learning rate, and end to end against block-wise. One run at a time (each takes both cores); finished
# runs are skipped, so an interrupted script resumes. Peak RSS and heal time are in each report.json
# (stages.*.peak_rss_mb, stages.heal.seconds). The table goes into docs/results.md by hand.
# Usage: scripts/smollm2_levers.sh [output root]
set -euo pipefail
root=${1:-outputs/smollm2}
starfish=${STARFISH:-starfish}
run() { "$starfish" run model=smollm2_135m output_root="$root" "$@"; }

for seed in 0 1 2; do  # the default recipe and calibration, as a user gets them
    run pruner.sparsity=0.5 seed=$seed
    run pruner.pattern=2:4 seed=$seed
done
for count in 32 64; do  # fewer calibration windows (the default: 128)
    run pruner.sparsity=0.5 calib.count=$count eval.tasks=[]
done
run pruner.sparsity=0.5 calib.count=64 calib.seq_len=256 eval.tasks=[]  # the same tokens, longer windows
run pruner.sparsity=0.5 calib.count=32 healer.lr=6e-4 eval.tasks=[]     # a 4x lower learning rate
run pruner.sparsity=0.5 calib.count=32 healer=kd healer.batch_size=8 healer.epochs=7 healer.lr=2.4e-3 eval.tasks=[]
for loss in cosine standardized; do  # end to end: which of the learning rate and the loss keeps it from hurting
    run pruner.sparsity=0.5 calib.count=32 healer.recipe=high healer.mode=end_to_end healer.lr=1e-4 \
        healer.loss=$loss eval.tasks=[]
done
# KD at the end-to-end learning rate that works, with at least the default's heal time (80 steps)
run pruner.sparsity=0.5 healer=kd healer.batch_size=8 healer.lr=1e-4 healer.epochs=5
# early stopping: 16 of the 128 windows held out, each block keeps the epoch with the best loss on them
run pruner.sparsity=0.5 healer.holdout=0.125
# the rest of the grid, at seed 0: SparseGPT and magnitude at 50%, Wanda at 60% with and without OWL
run pruner=sparsegpt pruner.sparsity=0.5
run pruner=magnitude pruner.sparsity=0.5
run pruner.sparsity=0.6
run pruner.sparsity=0.6 pruner.allocation=owl
# longer: twice the calibration windows (32,768 tokens; about twice the heal time)
for seed in 0 1 2; do
    run pruner.sparsity=0.5 calib.count=256 seed=$seed
done
