#!/usr/bin/env bash
# The exact recipe of the bundled demo checkpoint (polymixer/bundled/demo): a 6-block, width-128
# PoM-DiT (patch 4 on 32x32 MNIST, 64 tokens, 2.46M parameters) trained with flow matching.
# One thread: on a 2-core machine shared with other jobs, 2 OpenMP threads per process
# oversubscribe the cores and run ~8x slower. Resume with the same command plus --resume.
set -euo pipefail
polymixer train --data mnist --image-size 32 --preset DiT-M/4 --depth 6 --mixer pom --pom-heads 1 --mlp-conv 0 --pom-rotary 0 \
  --batch-size 64 --lr 1e-3 --warmup-steps 300 --ema-decay 0.999 --time-sampling logit_normal \
  --steps 30000 --checkpoint-every 200 --sample-every 400 --keep-last 3 --log-every 20 \
  --num-threads 1 --seed 0 --out runs/demo "$@"
# The bundled folder is the EMA model at the step the run was stopped:
#   polymixer export --checkpoint runs/demo/checkpoints/step_00005600 --out polymixer/bundled/demo --dtype float16
