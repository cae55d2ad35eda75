#!/usr/bin/env bash
# One GPU session's checks: the CUDA tests, then the PoM-vs-SDPA benchmark.
# Run from the repository root on a machine with a CUDA GPU and torch (+ triton):
#   bash benchmarks/gpu_check.sh OUTDIR [NAME]
# writes OUTDIR/gpu_tests.log, OUTDIR/NAME_full.{md,json}, OUTDIR/NAME_causal_block.{md,json}.
set -u
out=${1:?usage: gpu_check.sh OUTDIR [NAME]}
name=${2:-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider --maxfail=20 -rfEw \
    tests/test_triton.py tests/test_cuda.py tests/test_nn_mixer.py::test_autocast_fused_and_lean_match_autograd -k "cuda or not cpu" 2>&1 | tee "$out/gpu_tests.log" | grep -v DEBUG | tail -60
timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/bench_gpu.py --modes full --ns "${NS:-1024,4096,16384,65536}" \
    --rivals "${RIVALS:-pom-product,pom-product:autograd,floor-product,pom-power,pom-power:autograd,floor-power,sdpa}" \
    --out "$out/${name}_full" --plot
timeout "${BENCH2_TIMEOUT:-110}" python3 benchmarks/bench_gpu.py --modes causal,block --ns "${NS2:-4096,65536}" \
    --rivals "${RIVALS2:-pom-product,pom-product:autograd,floor-product,pom-power,pom-power:autograd,sdpa}" \
    --out "$out/${name}_causal_block" --plot
