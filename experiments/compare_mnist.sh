#!/usr/bin/env bash
# PoM-DiT against attention-DiT on the same work (issue 11): the same preset (DiT-M/4 with 6
# blocks, width 128: PoM 2.07M parameters with one gate scalar per head, attention 1.87M, +11%),
# the same data (bundled MNIST at 32x32), steps, batch, learning rate, seed and sampler, each
# trained by `polymixer train`, then measured by `polymixer eval`.
#   bash experiments/compare_mnist.sh SEED [STEPS]       # the models in parallel, one thread each
# NAMES picks the models (default "pom attention"); issue 23's local-detail additions:
#   pom_conv, attention_conv   the presets with an identity-initialised 3x3 depthwise conv in every MLP
#   pom_conv_rotary            PoM with the MLP conv and rotary positions over (row, column)
# RUNS sets the folder (default runs/compare); SAMPLES the evaluation's size (1000).
# Resume an interrupted set with the same command plus RESUME=1.
#   NAMES="pom_conv_rotary attention_conv" RUNS=runs/compare_conv bash experiments/compare_mnist.sh 0 4000
# Every run starts from the plain presets (--mlp-conv 0 --pom-rotary 0: the PoM presets now carry both,
# issue 23) and adds its own options, so the names keep their meaning.
set -euo pipefail
seed=${1:-0}
steps=${2:-2000}
resume=${RESUME:+--resume}
runs=${RUNS:-runs/compare}
samples=${SAMPLES:-1000}
mkdir -p "$runs"
declare -A options=(
  [pom]="--mixer pom"
  [attention]="--mixer attention"
  [pom_conv]="--mixer pom --mlp-conv 3"
  [attention_conv]="--mixer attention --mlp-conv 3"
  [pom_conv_rotary]="--mixer pom --mlp-conv 3 --pom-rotary 2"
)
read -r -a names <<< "${NAMES:-pom attention}"
for name in "${names[@]}"; do
  [ -n "${options[$name]+set}" ] || { echo "compare_mnist.sh: unknown run name $name (one of ${!options[*]})" >&2; exit 2; }
done
for name in "${names[@]}"; do
  read -r -a opts <<< "${options[$name]}"
  polymixer train --data mnist --image-size 32 --preset DiT-M/4 --depth 6 --mlp-conv 0 --pom-rotary 0 "${opts[@]}" \
    --batch-size 64 --lr 1e-3 --warmup-steps 300 --ema-decay 0.999 --time-sampling logit_normal --steps "$steps" \
    --checkpoint-every 200 --sample-every 1000 --keep-last 2 --log-every 50 --progress false \
    --num-threads 1 --seed "$seed" --out "$runs/${name}_seed${seed}" $resume \
    > "$runs/${name}_seed${seed}.log" 2>&1 &
done
wait
running=0
for name in "${names[@]}"; do
  polymixer eval --checkpoint "$runs/${name}_seed${seed}/ema_model" --num-samples "$samples" --steps 20 \
    --seed 0 --threads 1 --out "$runs/${name}_seed${seed}_eval.json" > "$runs/${name}_seed${seed}_eval.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" = 2 ]; then wait; running=0; fi  # two evaluations at a time on two cores
done
wait
