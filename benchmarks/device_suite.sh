#!/usr/bin/env bash
# On the lent GPU (see /work/shared/tools/device-mlx-cuda.md; mlx + mlx-cuda-13 installed in /opt/site):
# make `ppchat` importable from this checkout, then run what is asked, logging under $OUT.
#   bash benchmarks/device_suite.sh tests            CUDA kernel tests + GPU parity suite (TF32 off, then on)
#   bash benchmarks/device_suite.sh bench NAME:ARGS  `ppchat bench` runs (benchmarks/run_device.py)
#   bash benchmarks/device_suite.sh py SCRIPT ARGS   any script (write its output under /tmp/results)
#   bash benchmarks/device_suite.sh serve-load ARGS  benchmarks/serve_load.py (`ppchat serve --max-conversations N`
#        under load), e.g. `--config 7b --quantize 4 --conversations 1,4,8 --seconds 30 --machine "NVIDIA H200"`.
#        It needs aiohttp, sphn, soxr and soundfile: their wheels travel in .w3 (add /.w3/ to .git/info/exclude), made here:
#          python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .w3 aiohttp 'sphn>=0.2.1,<0.3' soxr \
#            soundfile && rm .w3/numpy-*       (23 MB; numpy is on the host)
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
        tests/test_voice_parity.py tests/test_batch.py tests/test_kv_cache_8bit.py tests/test_step_graph.py \
        tests/test_embeddings.py tests/test_sampling.py 2>&1 | tail -25
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
  serve-load)
    if [ -d .w3 ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /opt/site .w3/*.whl 2>&1 | tail -3
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/serve_load.log"
    python3 benchmarks/serve_load.py "$@" --json /tmp/results/serve_load.json 2>&1 | tee -a "$OUT/serve_load.log"
    ;;
esac
tar czf "$OUT/results.tgz" -C /tmp results 2>/dev/null
