#!/usr/bin/env bash
# The recipe of the bundled video demo (polymixer/bundled/video_demo, since 2026-12-04): the
# pom_gated_next run of issue 24's long-video comparison (experiments/compare_long_video.sh).
# A PoM video DiT, DiT-M/4 with 6 blocks, width 128, patch 4 on 32x32 frames (64 tokens per
# frame), 2.49M parameters: the identity-initialised 3x3 depthwise conv in every MLP and rotary
# positions over (frame, row, column) (issue 23's additions), a content-gated decay over the
# earlier frames (--pom-frame-memory gated-decay), one noise level per frame with the finished
# frames read at noise level 0.05, and no absolute frame index, so it generates past the 4-12
# frames of its training clips. Each step trains only the frame after a clean prefix, the
# condition of frame-by-frame sampling (--history-target next). It starts from the shipped
# single-frame PoM model (checkpoints/compare/frames/pom) and trains 4,500 steps of 16 clips
# (about 1.5-2.5 h on one thread of a 2-core CPU, depending on the other load), then is
# evaluated on 128-frame clips (benchmarks/results/eval_video_demo.md).
#   bash experiments/train_video_demo.sh            # RUNS=runs/compare_long_video by default
#   RESUME=1 bash experiments/train_video_demo.sh   # after an interruption
# The bundled folder is its EMA model in float16 (5.0 MB), sampling with guidance 2.5 by default
# (benchmarks/results/sampling_next_cpu.md: at 3 its strokes thicken frame after frame):
#   polymixer export --checkpoint runs/compare_long_video/pom_gated_next_seed0/ema_model \
#     --out polymixer/bundled/video_demo --dtype float16 --guidance 2.5
# Former demos: the pom_gated run at 1,500 steps (2026-12-03, experiments/train_video_demo.sh at
# commit 24c2865) and plain PoM with one noise level per clip on 8-frame clips (at commit d8427eb).
set -euo pipefail
NAMES=pom_gated_next exec bash "$(dirname "$0")/compare_long_video.sh" 0 4500
