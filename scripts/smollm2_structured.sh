#!/usr/bin/env bash
# SmolLM2-135M pruned structurally (issue 36): a smaller, faster transformers model, healed on 16,384 calibration
# tokens. The headline point (half the MLP channels, one of three KV groups: intermediate_size 768, 6 heads, 2 KV
# heads) with the default healing over seeds 0-2, then depth (6 of 30 decoder layers), a lighter width, and KD at
# about STARFISH's heal time. Each run reports perplexity, WordNet accuracy, prefill and decode tokens/s against
# dense, weights in bytes, peak RSS (stages.*.peak_rss_mb) and heal time (stages.heal.seconds) in report.json.
# One run at a time (each takes both cores); finished runs are skipped, so an interrupted script resumes.
# `starfish export … format=hf` then writes the folder plain transformers loads. Tables: docs/results.md, by hand.
# Usage: scripts/smollm2_structured.sh [output root]
set -euo pipefail
root=${1:-outputs/smollm2}
starfish=${STARFISH:-starfish}
run() { "$starfish" run model=smollm2_135m output_root="$root" pruner=structured eval.speed=true "$@"; }

for seed in 0 1 2; do
    run pruner.mlp=0.5 pruner.heads=0.33 seed=$seed
done
run pruner.mlp=0 pruner.heads=0 pruner.layers=6          # depth: a 24-layer model
run pruner.mlp=0.25 pruner.heads=0                       # a lighter width
# KD on the same pruned checkpoint, for about the heal time of the STARFISH run above (healer.epochs sets it)
run pruner.mlp=0.5 pruner.heads=0.33 healer=kd healer.batch_size=8 healer.lr=1e-4 healer.epochs=${KD_EPOCHS:-2}
