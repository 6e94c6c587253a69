#!/usr/bin/env bash
# Everything that needs the GPU machine, in parts that each fit one device call (10 minutes):
#   bash benchmarks/device_suite.sh tests        # GPU tests (eager + compiled vs float32), k-NN on CUDA
#   bash benchmarks/device_suite.sh forward      # model-only rates, eager and compiled
#   bash benchmarks/device_suite.sh throughput   # end to end, with the GPU's busy fraction in a stage
#   SCALING=1,2,4 bash benchmarks/device_suite.sh scaling   # on a several-GPU machine: torchrun scaling
#   bash benchmarks/device_suite.sh kernels      # model-only rates and slowest kernels of the compiled network (KERNELS_ARGS: other variants), Inductor's generated code
#   N_REAL=256000 bash benchmarks/device_suite.sh scale   # scale: the five stages after generation at N_REAL real + 250,000 generated
#   ONE_PROCESS=1 N_REAL=256000 bash benchmarks/device_suite.sh scale   # the same five in one `dmd2report build` process
# Run back to back on a warm machine, later parts reuse the compiled kernels (Inductor's cache in /tmp).
# Results go to $OUT (the device tool brings that folder back); benchmarks/README.md says how they enter results/.
set -u -o pipefail
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1   # a caller's path (e.g. wheels unpacked elsewhere) stays
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
  scale)
    # A warm-up fit first compiles and caches numba's kernels (umap-learn's, the projection's), as a user's first
    # fit does; the timed run then loads them, as every later fit does. Stores of 1.28M take ~31 s to write.
    N_REAL=${N_REAL:-256000}
    NAME=$((N_REAL / 1000))k   # results/scale-h200-256k.json, -256k-build.json: the names results/ keeps
    if [ -n "${ONE_PROCESS:-}" ]; then MODE="--one-process --timeout 400"; NAME=$NAME-build; else MODE="--timeout 250"; fi
    timeout 90 python benchmarks/scale.py --n-real 60000 --n-gen 5000 --n-variant 2000 --stages fit \
      --random-checkpoint /tmp/rand.safetensors --root /tmp/warm --out /tmp/warm.json 2>&1 | tail -1
    timeout 480 python benchmarks/scale.py --n-real "$N_REAL" --n-gen 100000 --n-variant 50000 \
      --stages fit,measure,atlas,trajectory,render --random-checkpoint /tmp/rand.safetensors $MODE \
      --root /tmp/sc --keep --out "$OUT/scale-h200-$NAME.json" 2>&1 | tail -9 | tee "$OUT/scale.log" ;;
  scaling)
    timeout 570 python benchmarks/scaling.py --gpus "${SCALING:-1,2}" --out "$OUT" 2>&1 | tee "$OUT/scaling.log" ;;
esac
