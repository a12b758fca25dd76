#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with its output kept in gpu_check_<UTC date>.log; arguments pass through.
#   bash benchmarks/gpu_check.sh              # one H100/H200, about 6-8 minutes
#   bash benchmarks/gpu_check.sh --cpu-smoke  # CI-sized, on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
log="gpu_check_$(date -u +%Y%m%dT%H%MZ).log"
python benchmarks/gpu_check.py "$@" 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
