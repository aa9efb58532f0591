#!/usr/bin/env bash
# On the lent GPU (see /work/shared/tools/device-mlx-cuda.md; mlx + mlx-cuda-13 installed in /opt/site):
# make `ppchat` importable from this checkout, then run what is asked, logging under $OUT.
#   bash benchmarks/device_suite.sh tests            CUDA kernel tests + GPU parity suite (TF32 off, then on)
#   bash benchmarks/device_suite.sh bench NAME:ARGS  `ppchat bench` runs (benchmarks/run_device.py)
#   bash benchmarks/device_suite.sh py SCRIPT ARGS   any script (write its output under /tmp/results)
# Results (JSON) are packed into $OUT/results.tgz; logs go to $OUT/<what>.log.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p /tmp/pp/ppchat /tmp/results
[ -e /tmp/pp/ppchat/__init__.py ] || {
  cp -r "$ROOT"/app/. /tmp/pp/ppchat/
  for d in models engine sessions tui asr net; do ln -sfn "$ROOT/$d" /tmp/pp/ppchat/$d; done
}
export PYTHONPATH=/opt/site:/tmp/pp:$ROOT PYTHONUNBUFFERED=1
export PPCHAT_FIXTURES=${PPCHAT_FIXTURES:-$ROOT/fixtures}
cd "$ROOT"
what=$1; shift
case $what in
  tests)
    {
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
      python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device(), mx.device_info().get('device_name'))"
      echo "=== CUDA kernel tests"
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py 2>&1 | tail -15
      echo "=== parity suite, batch and graph tests on the GPU (MLX_ENABLE_TF32=0, set by tests/conftest.py)"
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_lm_parity.py tests/test_mimi_parity.py \
        tests/test_voice_parity.py tests/test_batch.py tests/test_kv_cache_8bit.py tests/test_step_graph.py 2>&1 | tail -25
      echo "=== the same parity files with TF32 on (MLX's CUDA default), for the record"
      MLX_ENABLE_TF32=1 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_lm_parity.py \
        tests/test_mimi_parity.py tests/test_voice_parity.py 2>&1 | grep -E "passed|failed|^FAILED" | cut -c1-200
    } 2>&1 | tee "$OUT/tests.log"
    ;;
  bench)
    python3 benchmarks/run_device.py /tmp/results "$@" 2>&1 | tee -a "$OUT/bench.log"
    ;;
  py)
    python3 "$@" 2>&1 | tee -a "$OUT/py.log"
    ;;
esac
tar czf "$OUT/results.tgz" -C /tmp results 2>/dev/null
