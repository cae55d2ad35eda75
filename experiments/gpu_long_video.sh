#!/usr/bin/env bash
# Issue 24 (and issue 23's clips) on one CUDA machine in a few minutes: the long-video rivals of
# experiments/compare_long_video.sh (same recipe: moving digits, 4..12-frame clips, one noise level
# per frame, history noise 0.05, no frame index, DiT-M/4 depth 6 with the MLP conv, started from
# the shipped single-frame models) trained all at once on one GPU for a wall-clock budget, then
# every model evaluated at the SAME step (the last checkpoint every run reached; the learning rate
# is constant after warm-up, so that checkpoint is what a run of exactly that many steps gives),
# on clips of EVAL_FRAMES frames generated frame by frame, with guidance CFG.
#   bash experiments/gpu_long_video.sh OUTDIR
# Knobs (environment): NAMES (pom_gated attention_roll), SEEDS (0), EXTRA_NAMES0 (more rivals,
# seed 0 only; default none), TRAIN_SECONDS (300), BATCH (16, the CPU recipe's), EVERY (500: the
# checkpoint spacing, the grain of the common step), EVAL_FRAMES (64), SAMPLES (100), CFG (3),
# EVAL_SECONDS (180), EVAL_THREADS (4: the evaluation's CPU measurements), TESTS (0; 1: the CUDA
# tests beside the evaluations), DEVICE (cuda; cpu for a dry run).
# Learnt on an H200 (benchmarks/results/gpu_h200_2026-12-04.md): 8 runs sharing the GPU made
# 400-1,300 steps of batch 64 each in 270 s, and 8 evaluations of 128 frames at once did not finish
# in 230 s. Hence the defaults: two runs, 64 frames.
# Writes OUTDIR/evals/NAME_cfgG_seedS_evalF.json (+ .log), OUTDIR/logs/*.log, OUTDIR/summary.txt,
# and the EMA weights of the evaluated step, float16, as OUTDIR/models_NAME.tar.
# Table: python experiments/compare_long_video_report.py --runs OUTDIR/evals --frames EVAL_FRAMES
set -u
out=${1:?usage: gpu_long_video.sh OUTDIR}
mkdir -p "$out/evals" "$out/logs"
runs=${RUNS:-/tmp/gpu_long_video}
mkdir -p "$runs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}"
bin=$(mktemp -d)   # a `polymixer` command for compare_long_video.sh (timeout needs a program)
printf '#!/bin/sh\nexec python3 -m polymixer.cli "$@"\n' > "$bin/polymixer"; chmod +x "$bin/polymixer"
export PATH="$bin:$PATH"
device=${DEVICE:-cuda}
read -r -a names <<< "${NAMES:-pom_gated attention_roll}"
read -r -a seeds <<< "${SEEDS:-0}"
read -r -a extra0 <<< "${EXTRA_NAMES0:-}"
every=${EVERY:-500}
eval_frames=${EVAL_FRAMES:-64}
cfg=${CFG:-3}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/summary.txt"

# 1. training, every rival at once, each stopped by SIGTERM after TRAIN_SECONDS (a checkpoint at
#    that step; the ones every EVERY steps stay)
train_env=(PARALLEL=64 TRAIN_ONLY=1 RUNS="$runs" TRAIN_WRAP="timeout -s TERM -k 60 ${TRAIN_SECONDS:-300}"
           EXTRA_TRAIN="--batch-size ${BATCH:-16} --device $device --bf16 false --sample-every 0 --checkpoint-every $every --keep-last 1000")
for seed in "${seeds[@]}"; do
  env "${train_env[@]}" NAMES="${names[*]}" bash experiments/compare_long_video.sh "$seed" 100000 &
done
if [ "${#extra0[@]}" -gt 0 ]; then
  env "${train_env[@]}" NAMES="${extra0[*]}" bash experiments/compare_long_video.sh 0 100000 &
fi
sleep ${CHECK_AFTER:-90}
for log in "$runs"/*.log; do   # a run that died at the start: stop here, cheaply
  if grep -qE "Traceback|Error" "$log"; then
    echo "== $log"; tail -30 "$log"; pkill -TERM -f "polymixer.cli train"; wait; exit 1
  fi
done
wait
cp "$runs"/*.log "$out/logs/"

# 2. the common step: the last multiple of EVERY that every run has a checkpoint of
common=$(python3 - "$runs" "$every" <<'EOF'
import sys
from pathlib import Path
runs, every = Path(sys.argv[1]), int(sys.argv[2])
last = []
for run in sorted(p for p in runs.iterdir() if p.is_dir()):
    steps = [int(c.name[5:]) for c in (run / "checkpoints").glob("step_*") if int(c.name[5:]) % every == 0]
    print(run.name, max(steps, default=0), file=sys.stderr)
    last.append(max(steps, default=0))
print(min(last))
EOF
)
echo "common step: $common" | tee -a "$out/summary.txt"
[ "$common" -gt 0 ] || exit 1

# 3. evaluation of every run at that step (all at once), the CUDA tests beside them
ckpt=$(printf "step_%08d" "$common")
for run in "$runs"/*/; do
  run=${run%/}; base=$(basename "$run"); name=${base%_seed*}; seed=${base##*_seed}
  (timeout "${EVAL_SECONDS:-180}" python3 -m polymixer.cli eval --checkpoint "$run/checkpoints/$ckpt" \
     --frames "$eval_frames" --num-samples "${SAMPLES:-100}" --steps 20 --batch-size 100 --seed 0 --threads "${EVAL_THREADS:-4}" \
     --mode sequential --cfg "$cfg" --device "$device" --out "$out/evals/${name}_cfg${cfg}_seed${seed}_eval${eval_frames}.json" \
     > "$out/evals/${name}_cfg${cfg}_seed${seed}_eval${eval_frames}.log" 2>&1
   python3 -m polymixer.cli export --checkpoint "$run/checkpoints/$ckpt" --out "$runs/models/$base" --dtype float16 \
     > /dev/null 2>&1) &
done
if [ "${TESTS:-0}" = 1 ]; then
  timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/test_cuda.py tests/test_triton.py \
    -k "cuda or not cpu" > "$out/gpu_tests.log" 2>&1 &
fi
wait
tail -3 "$out/gpu_tests.log" 2>/dev/null | tee -a "$out/summary.txt"
for f in "$out"/evals/*.json; do echo "$(basename "$f") ok"; done | tee -a "$out/summary.txt"
for name in $(ls "$runs/models" | sed 's/_seed.*//' | sort -u); do   # one tar per rival (<= 16 MiB each)
  (cd "$runs/models" && tar cf "$out/models_$name.tar" "$name"_seed*)
done
(cd "$out" && tar cf results.tar evals logs && rm -rf evals logs)
ls -la "$out"
