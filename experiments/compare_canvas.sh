#!/usr/bin/env bash
# Larger canvases (issue 23): does training on several canvas sides fix PoM's digits at 48x48?
# The PoM winner of the local-detail study (conv + rotary positions) trained at 32x32 on single
# moving-digit frames draws its digits in pieces when sampled at 48x48 (FD 283.6 against
# attention + conv's 48.1, benchmarks/results/frames_at48_seed0_cpu.md). Each arm continues a
# shipped 32x32 model (INIT_ROOT, default checkpoints/compare/frames) for STEPS more steps with
# the same recipe, so that the only difference between the arms of a mixer is the canvases:
#   pom_same         PoM + conv + rotary, still 32x32 only (the control: the same extra steps)
#   pom_sizes        the same with --image-sizes 32,48 (a side drawn per step, the digit stays 16x16)
#   attention_same, attention_sizes   attention + conv, the same two arms
#   pom_local_same   pom_same with a 5x5 neighbourhood softmax beside PoM in every block
#                    (--mixer 'pom + local-attention', started with its output at zero): does a
#                    mixer that only sees a fixed neighbourhood carry to larger canvases?
# then `polymixer eval` of each EMA model at 32, 48 and 64 (EVAL_SIZES), SAMPLES samples each.
#   bash experiments/compare_canvas.sh [SEED] [STEPS]
#   NAMES="pom_same pom_sizes" bash experiments/compare_canvas.sh 0 1000
# RESUME=1 resumes (the training log is appended to); RUNS (default runs/compare_canvas); SIZES (the drawn sides, default 32,48);
# SAMPLES (500); EVAL_SIZES ("32 48 64"). Two runs at a time, one thread each (a 2-core machine).
# A 48x48 step costs about 2.3x a 32x32 one (144 tokens against 64): the arms have the same steps,
# not the same compute; the log's s/step says how much more the sizes arm took.
set -euo pipefail
seed=${1:-0}
steps=${2:-1000}
resume=${RESUME:+--resume}
runs=${RUNS:-runs/compare_canvas}
sizes=${SIZES:-32,48}
samples=${SAMPLES:-500}
read -r -a eval_sizes <<< "${EVAL_SIZES:-32 48 64}"
init_root=${INIT_ROOT:-checkpoints/compare/frames}
mkdir -p "$runs"
declare -A options=(
  [pom_same]="--mixer pom --mlp-conv 3 --pom-rotary 3"
  [pom_sizes]="--mixer pom --mlp-conv 3 --pom-rotary 3 --image-sizes $sizes"
  [attention_same]="--mixer attention --mlp-conv 3"
  [attention_sizes]="--mixer attention --mlp-conv 3 --image-sizes $sizes"
  [pom_local_same]="--mixer 'pom + local-attention' --mlp-conv 3 --pom-rotary 3"
)
read -r -a names <<< "${NAMES:-pom_same pom_sizes}"
for name in "${names[@]}"; do
  [ -n "${options[$name]+set}" ] || { echo "compare_canvas.sh: unknown run name $name (one of ${!options[*]})" >&2; exit 2; }
done
run() {
  local name=$1
  eval "opts=(${options[$name]})"
  [ -n "$resume" ] || : > "$runs/${name}_seed${seed}.log"  # a resume appends to the run's log
  polymixer train --data moving-digits --frames 1 --image-size 32 --preset DiT-M/4 --depth 6 "${opts[@]}" \
    --init-from "$init_root/${name%%_*}" \
    --batch-size 64 --lr 5e-4 --warmup-steps 100 --ema-decay 0.999 --steps "$steps" \
    --checkpoint-every 100 --sample-every 500 --sample-steps 20 --keep-last 2 --log-every 50 --progress false \
    --num-threads 1 --seed "$seed" --out "$runs/${name}_seed${seed}" $resume \
    >> "$runs/${name}_seed${seed}.log" 2>&1
  for size in "${eval_sizes[@]}"; do
    polymixer eval --checkpoint "$runs/${name}_seed${seed}/ema_model" --image-size "$size" \
      --num-samples "$samples" --steps 20 --batch-size 50 --seed 0 --threads 1 \
      --save-samples "$runs/${name}_seed${seed}_at${size}.png" \
      --out "$runs/${name}_seed${seed}_at${size}_eval.json" > "$runs/${name}_seed${seed}_at${size}_eval.log" 2>&1
  done
}
running=0
for name in "${names[@]}"; do
  run "$name" &
  running=$((running + 1))
  if [ "$running" = 2 ]; then wait -n; running=1; fi
done
wait
