#!/usr/bin/env bash
# Does PoM's gate width limit it on images where the object must be found? Single frames of
# moving digits (a 16x16 digit anywhere on a 32x32 canvas, unlike MNIST's centred digits),
# trained from scratch with the same recipe by four models that run at the same time:
#   pom            the preset: k=2, e=2, one gate scalar per head (4 heads)   2.07M parameters
#   pom_fullgate   k=2, e=2, a full-width gate (--pom-heads 1)                 2.46M
#   pom_e1         k=2, e=1, a full-width gate: attention's parameter count    1.87M
#   attention      the attention preset                                        1.87M
# and, chosen with NAMES="...", the power variant (docs/design.md, section 1) at equal parameter counts:
#   power_fullgate     power, k=2, e=2, full gate: attention's parameter count   1.87M
#   power_k3_fullgate  the same with degree 3 (a larger state, no more weights)  1.87M
#   power_e4           power, k=2, e=4, 4 gate heads: the PoM preset's count     2.07M
# and the local-detail candidates (issue 23): an identity-initialised 3x3 depthwise
# convolution inside every MLP (Mix-FFN), for either mixer:
#   pom_conv, attention_conv   the presets with --mlp-conv 3
#   pom_rotary                 the PoM preset with rotary positions (frame, row, column: the frames are
#                              1-frame clips, so a third of the rotated pairs never turn)
#   pom_conv_rotary            both
#   pom_fullgate_conv          the full-width gate (--pom-heads 1) with the MLP conv
#   pom_sideconv, attention_sideconv  an identity-initialised 3x3 depthwise convolution beside the
#                              mixer ("pom + conv", DiG-style) instead of inside the MLP
#   pom_local_conv, attention_local_conv  softmax attention over each token's 5x5 neighbours beside the
#                              mixer ("pom + local-attention", a hybrid block), with the MLP conv
#   pom_local                  the same hybrid without the MLP conv
#   pom_local_half_conv        the hybrid in every other block ('pom + local-attention, pom'), MLP conv
# then `polymixer eval` on each EMA model. Results: RUNS (default runs/compare_gate).
#   bash experiments/compare_gate.sh [SEED] [STEPS]
#   NAMES="power_fullgate power_k3_fullgate power_e4" RUNS=runs/compare_gate_power bash experiments/compare_gate.sh 0 4000
#   python experiments/compare_gate_report.py --runs runs/compare_gate
# LR sets the learning rate (default 1e-3). Resume an interrupted set with RESUME=1 and the same command.
# KEEP=0 keeps every checkpoint (one each CKPT_EVERY steps, default 200) for Fréchet distance against
# steps (`polymixer eval --checkpoint RUN/checkpoints/step_...`); SAMPLES sets the evaluation's size (500).
# Every run starts from the plain presets (--mlp-conv 0 --pom-rotary 0: the PoM presets now carry both,
# issue 23) and adds its own options, so the names keep their meaning.
set -euo pipefail
seed=${1:-0}
steps=${2:-1200}
resume=${RESUME:+--resume}
runs=${RUNS:-runs/compare_gate}
lr=${LR:-1e-3}
keep=${KEEP:-2}
every=${CKPT_EVERY:-200}
samples=${SAMPLES:-500}
mkdir -p "$runs"
declare -A options=(
  [pom]="--mixer pom"
  [pom_fullgate]="--mixer pom --pom-heads 1"
  [pom_e1]="--mixer pom --pom-heads 1 --pom-expand 1"
  [attention]="--mixer attention"
  [power_fullgate]="--mixer pom --pom-variant power --pom-heads 1"
  [power_k3_fullgate]="--mixer pom --pom-variant power --pom-heads 1 --pom-degree 3"
  [power_e4]="--mixer pom --pom-variant power --pom-expand 4"
  [pom_conv]="--mixer pom --mlp-conv 3"
  [attention_conv]="--mixer attention --mlp-conv 3"
  [pom_rotary]="--mixer pom --pom-rotary 3"
  [pom_conv_rotary]="--mixer pom --mlp-conv 3 --pom-rotary 3"
  [pom_fullgate_conv]="--mixer pom --pom-heads 1 --mlp-conv 3"
  [pom_sideconv]="--mixer 'pom + conv'"
  [attention_sideconv]="--mixer 'attention + conv'"
  [pom_local_conv]="--mixer 'pom + local-attention' --mlp-conv 3"
  [attention_local_conv]="--mixer 'attention + local-attention' --mlp-conv 3"
  [pom_local]="--mixer 'pom + local-attention'"
  [pom_local_half_conv]="--mixer 'pom + local-attention, pom' --mlp-conv 3"
)
read -r -a names <<< "${NAMES:-pom pom_fullgate pom_e1 attention}"
for name in "${names[@]}"; do
  [ -n "${options[$name]+set}" ] || { echo "compare_gate.sh: unknown run name $name (one of ${!options[*]})" >&2; exit 2; }
done
for name in "${names[@]}"; do
  eval "opts=(${options[$name]})"  # several words, some quoted ('pom + conv')
  polymixer train --data moving-digits --frames 1 --image-size 32 --preset DiT-M/4 --depth 6 --mlp-conv 0 --pom-rotary 0 "${opts[@]}" \
    --batch-size 64 --lr "$lr" --warmup-steps 300 --ema-decay 0.999 --steps "$steps" \
    --checkpoint-every "$every" --sample-every 1000 --sample-steps 20 --keep-last "$keep" --log-every 50 --progress false \
    --num-threads 1 --seed "$seed" --out "$runs/${name}_seed${seed}" $resume \
    > "$runs/${name}_seed${seed}.log" 2>&1 &
done
wait
running=0
for name in "${names[@]}"; do
  polymixer eval --checkpoint "$runs/${name}_seed${seed}/ema_model" --num-samples "$samples" --steps 20 \
    --batch-size 50 --seed 0 --threads 1 --out "$runs/${name}_seed${seed}_eval.json" &
  running=$((running + 1))
  if [ "$running" = 2 ]; then wait; running=0; fi  # two evaluations at a time on two cores
done
wait
