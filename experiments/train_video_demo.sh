#!/usr/bin/env bash
# The recipe of the bundled video demo (polymixer/bundled/video_demo): a 6-block, width-128
# PoM video DiT (patch 4 on 32x32 frames, 64 tokens per frame, 8 frames = 512 tokens per
# clip, 2.46M parameters), block-causal over frames, one noise level per clip (the paper's
# training), on moving digits (one MNIST digit bouncing in a 32x32 canvas, made on the fly).
# It starts from the bundled image demo: the video DiT has exactly the image DiT's parameters
# (the frame positions are sin-cos, not learned), so the image model's digits are a head start
# and the run only has to learn motion and consistency across frames.
# One thread (a 2-core machine shared with other jobs). Resume with the same command plus --resume.
set -euo pipefail
polymixer train --data moving-digits --image-size 32 --frames 8 --preset DiT-M/4 --depth 6 --mixer pom --mlp-conv 0 --pom-rotary 0 \
  --pom-heads 1 --init-from "$(python -c 'import polymixer; print(polymixer.bundled_checkpoint("demo"))')" \
  --batch-size 16 --lr 5e-4 --warmup-steps 100 --ema-decay 0.998 --steps 3000 \
  --checkpoint-every 100 --sample-every 500 --sample-steps 20 --keep-last 3 --log-every 20 \
  --num-threads 1 --seed 0 --out runs/video_demo "$@"
# The bundled folder is the EMA model at the step the run was stopped:
#   polymixer export --checkpoint runs/video_demo/checkpoints/step_<N> --out polymixer/bundled/video_demo --dtype float16
