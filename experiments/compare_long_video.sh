#!/usr/bin/env bash
# Long video (issue 24): video DiTs trained on short clips of varied length, then generating
# clips far longer than any they saw, measured frame position by frame position.
#
# Every model: moving digits (one digit, 32x32), clips of MIN_FRAMES..FRAMES frames drawn per
# step (default 4..12), one noise level per frame (diffusion forcing) with the finished frames
# read at a small noise level (--history-noise 0.05), no absolute frame index
# (--frame-embedding none: time only through the mixers), DiT-M/4 with 6 blocks and the
# identity-initialised 3x3 depthwise conv in every MLP (issue 23's addition for both mixers),
# the same steps, batch, learning rate and seed, each started from its mixer's shipped model of
# single moving-digit frames (INIT_ROOT=checkpoints/compare/frames: pom, PoM with the
# conv and rotary positions over (frame, row, column); attention, attention with the conv).
# The rivals (NAMES picks some):
#   pom_mean        PoM, the paper's mean over every earlier frame, rotary positions over
#                   (frame, row, column): relative in time
#   pom_decay       the same with a learned decay per channel (--pom-frame-memory decay)
#   pom_gated       a decay gated by the frame's content (gated-decay)
#   pom_window      an exact sliding window of the last 4 frames (window:4)
#   attention_roll  attention with a rolling KV cache of the last 4 frames (--attention-window 4)
#   attention       attention with the full KV cache (its cost grows with the clip)
#   pom_mean_local, pom_gated_local   pom_mean and pom_gated with every other block mixing
#                   inside its own frame only (--mixer 'frame-local pom, pom'): in a block that
#                   reads earlier frames through the mean, frame f's own tokens weigh 1/(f+1)
#                   of what it reads; a frame-local block reads its own frame at full weight
#   pom_gated_spacetime   pom_gated plus, in every block, a softmax over the 5x5 tokens around
#                   each token in its frame and in the frame before (--mixer 'pom +
#                   spacetime-local'): a summary of all earlier frames cannot hold a digit's
#                   exact shape, one frame back at the same place can (constant state: one frame)
#   pom_gated_context     pom_gated whose patch embedding also reads the 2 frames before each frame
#                   at the same places (--context-frames 2, the inputs stacked onto the channels):
#                   a digit that only moves can be copied by a local operation (constant state:
#                   two frames' inputs)
#   pom_gated_context_clean   the same trained with the clean frames (at the history noise) as the
#                   stacked frames before (--clean-context), what frame-by-frame sampling shows
#   pom_gated_uniform, pom_gated_shift3   pom_gated trained on more high noise levels, where a
#                   frame's shape is decided (uniform noise levels instead of logit-normal; or the
#                   time shift 3, which the sampler's grid then also uses)
#   pom_gated_next  pom_gated trained only in the condition of frame-by-frame sampling: each clip
#                   cut after the first noisy frame that follows its clean prefix, the loss on that
#                   frame alone (--history-target next; fewer frames per step, so less compute at
#                   the same steps)
#   pom_gated_next_rollout   pom_gated_next whose clean prefix is the model's own: each step, the
#                   model remakes the prefix frame after frame from the real frames noised up to 0.5
#                   (2 Euler steps each, no gradient; --history-rollout 0.5), so it learns to continue
#                   its own slightly wrong frames with the real next frame (against drift)
#   attention_roll_next   attention_roll trained like pom_gated_next (--history-target next): the
#                   rolling-cache rival given the same training recipe
# then `polymixer eval` of each EMA model on clips of EVAL_FRAMES frames (default 64), generated frame by
# frame (--mode sequential for every rival: attention with the full cache too, whose default is joint) (per-frame Fréchet distance and accuracy with the real clips' floor, identity, motion,
# clip Fréchet distance by 8-frame window).
#   bash experiments/compare_long_video.sh [SEED] [STEPS]
#   NAMES="pom_mean attention_roll" bash experiments/compare_long_video.sh 0 1500
# RESUME=1 resumes an interrupted set; RUNS (default runs/compare_long_video); SAMPLES (100);
# EVAL_FRAMES (64); FRAMES/MIN_FRAMES (12/4); INIT_ROOT (checkpoints/compare/frames); CFG (the
# evaluation's guidance scale; default: each model's own, 2; with CFG set the results are named
# NAME_cfgG_seedS_evalF.json, a row of their own in the report).
# Table and plot: python experiments/compare_long_video_report.py --runs RUNS --frames EVAL_FRAMES
# Two runs at a time, one thread each (a 2-core machine); on a bigger machine PARALLEL runs at a
# time. EXTRA_TRAIN: flags appended to every training command (later flags win, e.g.
# "--batch-size 64 --device cuda"); TRAIN_WRAP: a command prefix for training (e.g.
# "timeout -s TERM 300": SIGTERM stops after the step with a checkpoint); TRAIN_ONLY=1: no eval.
set -euo pipefail
seed=${1:-0}
steps=${2:-1500}
resume=${RESUME:+--resume}
runs=${RUNS:-runs/compare_long_video}
samples=${SAMPLES:-100}
eval_frames=${EVAL_FRAMES:-64}
frames=${FRAMES:-12}
min_frames=${MIN_FRAMES:-4}
init_root=${INIT_ROOT:-checkpoints/compare/frames}
cfg=${CFG:+--cfg $CFG}
parallel=${PARALLEL:-2}
extra_train=${EXTRA_TRAIN:-}
train_wrap=${TRAIN_WRAP:-}
tag=${CFG:+_cfg$CFG}
mkdir -p "$runs"
declare -A options=(
  [pom_mean]="--mixer pom --pom-rotary 3"
  [pom_decay]="--mixer pom --pom-rotary 3 --pom-frame-memory decay"
  [pom_gated]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay"
  [pom_window]="--mixer pom --pom-rotary 3 --pom-frame-memory window:4"
  [attention_roll]="--mixer attention --attention-window 4"
  [attention]="--mixer attention"
  [pom_mean_local]="--mixer 'frame-local pom, pom' --pom-rotary 3"
  [pom_gated_local]="--mixer 'frame-local pom, pom' --pom-rotary 3 --pom-frame-memory gated-decay"
  [pom_gated_spacetime]="--mixer 'pom + spacetime-local' --pom-rotary 3 --pom-frame-memory gated-decay"
  [pom_gated_context]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay --context-frames 2"
  [pom_gated_context_clean]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay --context-frames 2 --clean-context"
  [pom_gated_uniform]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay --time-sampling uniform"
  [pom_gated_shift3]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay --shift 3"
  [pom_gated_next]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay --history-target next"
  [pom_gated_next_rollout]="--mixer pom --pom-rotary 3 --pom-frame-memory gated-decay --history-target next --history-rollout 0.5"
  [attention_roll_next]="--mixer attention --attention-window 4 --history-target next"
)
read -r -a names <<< "${NAMES:-pom_mean pom_decay pom_gated pom_window attention_roll attention}"
for name in "${names[@]}"; do
  [ -n "${options[$name]+set}" ] || { echo "compare_long_video.sh: unknown run name $name (one of ${!options[*]})" >&2; exit 2; }
done
train() {
  local name=$1 init
  case $name in pom*) init="$init_root/pom" ;; *) init="$init_root/attention" ;; esac
  eval "opts=(${options[$name]})"
  [ -n "$resume" ] || : > "$runs/${name}_seed${seed}.log"  # a resume appends to the run's log
  # shellcheck disable=SC2086
  $train_wrap polymixer train --data moving-digits --image-size 32 --frames "$frames" --min-frames "$min_frames" \
    --noise-levels frame --history-noise 0.05 --frame-embedding none \
    --preset DiT-M/4 --depth 6 --mlp-conv 3 "${opts[@]}" --init-from "$init" \
    --batch-size 16 --lr 5e-4 --warmup-steps 100 --ema-decay 0.998 --steps "$steps" \
    --checkpoint-every 100 --sample-every 500 --sample-steps 20 --keep-last 2 --log-every 20 --progress false \
    --num-threads 1 --seed "$seed" --out "$runs/${name}_seed${seed}" $resume $extra_train \
    >> "$runs/${name}_seed${seed}.log" 2>&1
}
evaluate() {
  local name=$1
  polymixer eval --checkpoint "$runs/${name}_seed${seed}/ema_model" --frames "$eval_frames" \
    --num-samples "$samples" --steps 20 --batch-size 50 --seed 0 --threads 1 --mode sequential $cfg \
    --out "$runs/${name}${tag}_seed${seed}_eval${eval_frames}.json" > "$runs/${name}${tag}_seed${seed}_eval${eval_frames}.log" 2>&1
}
running=0
for name in "${names[@]}"; do
  if [ -n "${TRAIN_ONLY:-}" ]; then (train "$name") & else (train "$name" && evaluate "$name") & fi
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then wait -n || true; running=$((running - 1)); fi
done
wait
