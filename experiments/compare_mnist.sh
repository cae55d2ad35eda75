#!/usr/bin/env bash
# PoM-DiT against attention-DiT on the same work (issue 11): the same preset (DiT-M/4 with 6
# blocks, width 128: PoM 2.07M parameters with one gate scalar per head, attention 1.87M, +11%),
# the same data (bundled MNIST at 32x32), steps, batch, learning rate, seed and sampler, each
# trained by `polymixer train`, then measured by `polymixer eval`.
#   bash experiments/compare_mnist.sh SEED [STEPS]       # both mixers in parallel, one thread each
# Resume an interrupted pair with the same command plus RESUME=1. Results: runs/compare/.
set -euo pipefail
seed=${1:-0}
steps=${2:-2000}
resume=${RESUME:+--resume}
for mixer in pom attention; do
  polymixer train --data mnist --image-size 32 --preset DiT-M/4 --depth 6 --mixer "$mixer" \
    --batch-size 64 --lr 1e-3 --warmup-steps 300 --ema-decay 0.999 --time-sampling logit_normal --steps "$steps" \
    --checkpoint-every 200 --sample-every 1000 --keep-last 2 --log-every 50 --progress false \
    --num-threads 1 --seed "$seed" --out "runs/compare/${mixer}_seed${seed}" $resume \
    > "runs/compare/${mixer}_seed${seed}.log" 2>&1 &
done
wait
for mixer in pom attention; do
  polymixer eval --checkpoint "runs/compare/${mixer}_seed${seed}/ema_model" --num-samples 1000 --steps 20 \
    --seed 0 --threads 1 --out "runs/compare/${mixer}_seed${seed}_eval.json"
done
