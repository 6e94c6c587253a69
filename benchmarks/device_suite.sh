#!/usr/bin/env bash
# Everything that needs the GPU machine, in one call (device time is scarce; a machine start costs minutes):
#   bash benchmarks/device_suite.sh            # on one H200: GPU tests, k-NN on CUDA, throughput
#   SCALING=1,2,4 bash benchmarks/device_suite.sh   # on a several-GPU machine: also the torchrun scaling run
# Results go to $OUT (the device tool brings that folder back).
set -u -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/device-suite}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_model.py 2>&1 | tail -3 | tee "$OUT/gpu-tests.log"
timeout 240 python benchmarks/knn.py 2>&1 | tee "$OUT/knn.log"
timeout 420 python benchmarks/throughput.py --compile --out "$OUT" 2>&1 | grep -v -i "warn\|softmax\|use case\|reduction\|^$" | tee "$OUT/throughput.log"
if [ -n "${SCALING:-}" ]; then
  timeout 500 python benchmarks/scaling.py --gpus "$SCALING" --out "$OUT" 2>&1 | tee "$OUT/scaling.log"
fi
