#!/usr/bin/env bash
# The exact recipe of the bundled demo checkpoint (polymixer/bundled/demo): a 6-block, width-128
# PoM-DiT (patch 4 on 32x32 MNIST, 64 tokens, 2.09M parameters) with issue 23's additions, an
# identity-initialised 3x3 depthwise conv in every MLP and rotary positions over (row, column)
# (the PoM presets' default since 2026-12-02), trained with flow matching. It is the seed-0 PoM
# model of `NAMES="pom_conv_rotary attention_conv" bash experiments/compare_mnist.sh 0 4000`
# (the same command line), so the demo is also the shipped comparison model checkpoints/compare/pom.
# One thread: on a 2-core machine shared with other jobs, 2 OpenMP threads per process
# oversubscribe the cores and run ~8x slower. Resume with the same command plus --resume.
set -euo pipefail
polymixer train --data mnist --image-size 32 --preset DiT-M/4 --depth 6 --mixer pom --mlp-conv 3 --pom-rotary 2 \
  --batch-size 64 --lr 1e-3 --warmup-steps 300 --ema-decay 0.999 --time-sampling logit_normal --steps 4000 \
  --checkpoint-every 200 --sample-every 1000 --keep-last 2 --log-every 50 --progress false \
  --num-threads 1 --seed 0 --out runs/demo "$@"
# The bundled folder is the EMA model at step 4,000:
#   polymixer export --checkpoint runs/demo/checkpoints/step_00004000 --out polymixer/bundled/demo --dtype float16
# Until 2026-12-03 the demo was plain PoM (--mlp-conv 0 --pom-rotary 0 --pom-heads 1, 2.46M
# parameters) stopped at step 5,600 of this recipe with --steps 30000; its strokes were speckled.
