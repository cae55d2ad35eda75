#!/usr/bin/env bash
# The GPU parts of the evidence (issue 11), in one run of a few minutes on a CUDA machine:
#   1. PoM-DiT against attention-DiT as images grow (DiT-B/2, bf16 autocast, 256..65,536 tokens):
#      forward, training step, sampling, peak memory, both mixers in the same run;
#   2. a torch.profiler table of one PoM layer's forward+backward per implementation
#      (fused / lean / autograd), product and power variants: where the fused path loses time.
# Run from the repository root (torch with CUDA; triton optional):
#   bash benchmarks/gpu_evidence.sh OUTDIR [NAME]
# writes OUTDIR/dit_scaling_NAME.{md,json,png}, OUTDIR/profile_NAME_product.{md,json},
# OUTDIR/profile_NAME_power.{md,json}. Time limits per step: SCALING_TIMEOUT, PROFILE_TIMEOUT.
set -u
out=${1:?usage: gpu_evidence.sh OUTDIR [NAME]}
name=${2:-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout "${SCALING_TIMEOUT:-300}" python3 benchmarks/bench_dit_scaling.py --device cuda --dtype bfloat16 \
    --preset "${PRESET:-DiT-B/2}" --tokens "${TOKENS:-256,1024,4096,16384,65536}" --repeats 5 --max-seconds 20 \
    --out "$out/dit_scaling_$name"
for variant in product power; do
  timeout "${PROFILE_TIMEOUT:-90}" python3 benchmarks/profile_mixer.py --variant "$variant" --n 16384 --batch 16 \
      --dim 1024 --out "$out/profile_${name}_$variant" | grep -v "^USDT"
done
