#!/usr/bin/env bash
# The GPU acceptance run of issue 28 (bench/gpu_accept.py; docs/gpu.md "Acceptance"). One command, no network:
#   GPU machine (device tool):  run(command="bash bench/gpu_accept.sh", carry=["bench/gpu-cache"], timeout_s=590)
#   rehearsal on a CPU:         bash bench/gpu_accept.sh --allow-cpu
# bench/gpu-cache comes from `.venv/bin/python bench/gpu_seed.py --prepare` (data, tokenizer, pylib; git-ignored).
# Leaves gpu_accept.json, gpu-accept-<card>.md, each run's log and result in $OUT (rewritten after every step).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_accept_out}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && [[ " $* " == *" --allow-cpu "* ]]; then
  PYTHON=.venv/bin/python  # the rehearsal: this checkout's venv
fi
. bench/torch_python.sh
echo "gpu_accept.sh: $(command -v "$PYTHON") ($("$PYTHON" -V 2>&1)), OUT=$OUT"
# No run starts after GPU_ACCEPT_BUDGET seconds; the guard is the hard stop under the device tool's 600 s.
timeout --signal=TERM --kill-after=10 "${GPU_ACCEPT_TIMEOUT:-570}" \
  "$PYTHON" bench/gpu_accept.py --out "$OUT" --budget-seconds "${GPU_ACCEPT_BUDGET:-450}" "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_accept: killed by the ${GPU_ACCEPT_TIMEOUT:-570} s guard; partial results in $OUT"
exit "$rc"
