#!/usr/bin/env bash
# Everything that needs the GPU machine, in parts that each fit one device call (10 minutes):
#   bash benchmarks/device_suite.sh tests        # GPU tests (eager + compiled vs float32), k-NN on CUDA
#   bash benchmarks/device_suite.sh forward      # model-only rates, eager and compiled
#   bash benchmarks/device_suite.sh throughput   # end to end, with the GPU's busy fraction in a stage
#   SCALING=1,2,4 bash benchmarks/device_suite.sh scaling   # on a several-GPU machine: torchrun scaling
#   bash benchmarks/device_suite.sh kernels      # model-only rates and slowest kernels of the compiled network (KERNELS_ARGS: other variants), Inductor's generated code
# Run back to back on a warm machine, later parts reuse the compiled kernels (Inductor's cache in /tmp).
# Results go to $OUT (the device tool brings that folder back).
set -u -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/device-suite}
mkdir -p "$OUT"
quiet() { grep -v -i "warn\|softmax\|use case\|^$"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
case "${1:-tests}" in
  tests)
    timeout 400 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_model.py tests/test_knn.py tests/test_runtime.py 2>&1 | tail -5 | tee "$OUT/gpu-tests.log"
    timeout 150 python benchmarks/knn.py 2>&1 | tee "$OUT/knn.log" ;;
  forward)
    timeout 560 python benchmarks/forward.py --out "$OUT" 2>&1 | quiet | tee "$OUT/forward.log" ;;
  throughput)
    timeout 570 python benchmarks/throughput.py --busy --out "$OUT" 2>&1 | quiet | tee "$OUT/throughput.log" ;;
  kernels)
    # One output_code.py per compiled graph (generation, extraction), named in the profile's kernel names.
    TORCH_COMPILE_DEBUG=1 TORCH_COMPILE_DEBUG_DIR=/tmp/compile-debug timeout 560 \
      python benchmarks/kernels.py ${KERNELS_ARGS:---variants default} --out "$OUT" 2>&1 | quiet | tee "$OUT/kernels.log"
    find /tmp/compile-debug -name output_code.py -size +100k | while read -r f; do
      cp "$f" "$OUT/output_code-$(echo "$f" | md5sum | cut -c1-8).py"; done
    ls -la "$OUT" ;;
  scaling)
    timeout 570 python benchmarks/scaling.py --gpus "${SCALING:-1,2}" --out "$OUT" 2>&1 | tee "$OUT/scaling.log" ;;
esac
