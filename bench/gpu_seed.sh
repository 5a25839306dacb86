#!/usr/bin/env bash
# The one command for the device tool (see docs/gpu.md):
#   run(command="bash bench/gpu_seed.sh", carry=["bench/gpu-cache"], timeout_s=590)
# Prepare the cache first, here: .venv/bin/python bench/gpu_seed.py --prepare
# Runs the seed train.py twice under h100-60s (cold, then warm compile caches) and
# leaves gpu_seed.json, gpu_seed.md, the run logs and nvidia-smi.txt in $OUT.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_seed_out}"
. bench/torch_python.sh  # the first Python that has torch, unless PYTHON names one
echo "gpu_seed.sh: $(command -v "$PYTHON") ($("$PYTHON" -V 2>&1)), OUT=$OUT"
# The script stops starting runs after --budget-seconds; the guard below is the hard stop,
# under the device tool's 600 s limit. Results are rewritten after every step, so a
# killed run still leaves what was measured.
timeout --signal=TERM --kill-after=10 "${GPU_SEED_TIMEOUT:-570}" \
  "$PYTHON" bench/gpu_seed.py --run --cache bench/gpu-cache --out "$OUT" \
  --budget-seconds "${GPU_SEED_BUDGET:-540}" "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_seed: killed by the ${GPU_SEED_TIMEOUT:-570} s guard; partial results in $OUT"
ls -la "$OUT"
exit "$rc"
