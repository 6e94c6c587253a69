#!/bin/bash
# Fit stage side by side: this checkout, then the old path (git archive f2c731b | tar -x -C /tmp/fitscale/old), on one scale.py config.
# Usage: benchmarks/fit_side_by_side.sh CONFIG [OLD_CHECKOUT]
cfg=$1; old=${2:-/tmp/fitscale/old}; new=$(cd "$(dirname "$0")/.." && pwd)
for pp in "$new" "$old"; do
  (cd "$pp" && /usr/bin/time -f "$pp wall %e s maxrss %M KB" env PYTHONPATH="$pp" "${PYTHON:-python}" -m dmd2report.cli -q fit --config "$cfg")
  uptime
done
