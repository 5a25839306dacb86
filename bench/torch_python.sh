# Sourced by bench/gpu_seed.sh and bench/gpu_accept.sh: sets PYTHON, unless given, to the first Python on the
# machine that imports torch (a lent GPU machine's Python is not known in advance), else python3.
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3 python python3.13 python3.12 python3.11 python3.14; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      PYTHON="$candidate"
      break
    fi
  done
  PYTHON="${PYTHON:-python3}"
fi
