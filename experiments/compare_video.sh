#!/usr/bin/env bash
# PoM video DiT against attention video DiT on moving digits (issue 11, the video half): each
# starts from its own mixer's image model of experiments/compare_mnist.sh (the same seed), then
# trains on 8-frame clips (block-causal over frames, one noise level per clip) with the same
# preset, data, steps, batch, learning rate and seed, and is measured per frame by
# `polymixer eval` (PoM generates frame by frame, attention denoises the clip jointly; the two
# are the same computation for PoM, tested in tests/test_video*.py).
#   bash experiments/compare_video.sh SEED [STEPS]     # needs runs/compare/{pom,attention}_seedSEED/ema_model
#   INIT_ROOT=checkpoints/compare bash experiments/compare_video.sh SEED [STEPS]
# The second form starts both mixers from the shipped seed-0 image models (float16 folders
# checkpoints/compare/{pom,attention}) whatever SEED is, so no image run is needed first.
# Resume an interrupted pair with the same command plus RESUME=1. Results: runs/compare_video/.
# Variants: MIXERS="pom" (or "attention") runs one mixer only, LOCAL_EVERY=k makes blocks 0, k,
# 2k, ... frame-local (the mixer pattern "frame-local pom, pom" for k = 2), EXTRA="..." adds
# training options to every run, RUNS=runs/compare_video_spatial puts the runs elsewhere, e.g.
#   MIXERS="pom" LOCAL_EVERY=2 RUNS=runs/compare_video_spatial \
#     INIT_ROOT=checkpoints/compare bash experiments/compare_video.sh 0 2000
# Every run starts from the plain presets (--mlp-conv 0 --pom-rotary 0: the PoM presets now carry both,
# issue 23) and adds its own options, so the names keep their meaning.
set -euo pipefail
seed=${1:-0}
steps=${2:-1000}
resume=${RESUME:+--resume}
mixers=${MIXERS:-pom attention}
runs=${RUNS:-runs/compare_video}
mkdir -p "$runs"
for mixer in $mixers; do
  init="runs/compare/${mixer}_seed${seed}/ema_model"
  [ -n "${INIT_ROOT:-}" ] && init="$INIT_ROOT/$mixer"
  pattern="$mixer"
  if [ "${LOCAL_EVERY:-0}" -gt 0 ]; then
    pattern="frame-local $mixer"
    for ((i = 1; i < LOCAL_EVERY; i++)); do pattern="$pattern, $mixer"; done
  fi
  polymixer train --data moving-digits --image-size 32 --frames 8 --preset DiT-M/4 --depth 6 --mixer "$pattern" --mlp-conv 0 --pom-rotary 0 \
    --init-from "$init" \
    --batch-size 16 --lr 5e-4 --warmup-steps 100 --ema-decay 0.998 --steps "$steps" \
    --checkpoint-every 100 --sample-every 500 --sample-steps 20 --keep-last 2 --log-every 20 --progress false \
    --num-threads 1 --seed "$seed" --out "$runs/${mixer}_seed${seed}" $resume ${EXTRA:-} \
    > "$runs/${mixer}_seed${seed}.log" 2>&1 &
done
wait
for mixer in $mixers; do
  polymixer eval --checkpoint "$runs/${mixer}_seed${seed}/ema_model" --num-samples 200 --steps 20 \
    --batch-size 50 --seed 0 --threads 1 --out "$runs/${mixer}_seed${seed}_eval.json" &
done
wait
