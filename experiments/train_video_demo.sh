#!/usr/bin/env bash
# The recipe of the bundled video demo (polymixer/bundled/video_demo): a 6-block, width-128
# PoM video DiT (patch 4 on 32x32 frames, 64 tokens per frame, 8 frames = 512 tokens per
# clip, 2.46M parameters), block-causal over frames, one noise level per clip (the paper's
# training), on moving digits (one MNIST digit bouncing in a 32x32 canvas, made on the fly).
# It starts from the former bundled image demo (plain PoM, full gate, 2.46M parameters; the
# bundled image demo is issue 23's PoM + conv + rotary model since commit 6546aed, whose weights
# do not fit this plain architecture): the script takes that folder from commit 4a3a6ef of this
# repository (or FORMER_DEMO=folder). The video DiT has exactly the image DiT's parameters
# (the frame positions are sin-cos, not learned), so the image model's digits are a head start
# and the run only has to learn motion and consistency across frames.
# One thread (a 2-core machine shared with other jobs). Resume with the same command plus --resume.
set -euo pipefail
former=${FORMER_DEMO:-}
if [ -z "$former" ]; then
  former=$(mktemp -d)/former_demo
  mkdir -p "$former"
  git -C "$(dirname "$0")/.." archive 4a3a6ef polymixer/bundled/demo | tar -x -C "$former" --strip-components 3
fi
polymixer train --data moving-digits --image-size 32 --frames 8 --preset DiT-M/4 --depth 6 --mixer pom --mlp-conv 0 --pom-rotary 0 \
  --pom-heads 1 --init-from "$former" \
  --batch-size 16 --lr 5e-4 --warmup-steps 100 --ema-decay 0.998 --steps 3000 \
  --checkpoint-every 100 --sample-every 500 --sample-steps 20 --keep-last 3 --log-every 20 \
  --num-threads 1 --seed 0 --out runs/video_demo "$@"
# The bundled folder is the EMA model at the step the run was stopped:
#   polymixer export --checkpoint runs/video_demo/checkpoints/step_<N> --out polymixer/bundled/video_demo --dtype float16
