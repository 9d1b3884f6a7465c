#!/usr/bin/env bash
# Issue 17's GPU measurement in one run, at full Flux-dev shape (19 double + 38 single blocks, bf16, B = 4,
# 1024x1024, 512 text tokens, every single block on all tokens), for M = 8 and M = 50:
#   - after: `python -m lib_ctxrep overhead`, which times side by side, alternately in one process, the plain forward
#     and the hooked one with each implementation (inner loop on the device; on the host with the Triton Gram and
#     combination; torch's Gram and combination with the numpy loop), and prints transfers, host and device
#     inner-loop times and the Gram and combination against the byte floor;
#   - before: the same benchmark of the library as it was before issue 17 (commit b15f6cd), when .before holds it.
# First, the kernels' and the device loop's tests run on the GPU (compiled, not interpreted), when pytest is there.
# About 8 minutes on an H100/H200; each run's log goes to $OUT (or /tmp/ctxrep_gpu), and summary.txt collects the
# figures.
#
# On the lent GPU machine (no network; diffusers and pytest are not installed there), carry their wheels in .whl and
# the old library in .before, both made here (both git-ignored) with:
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --abi abi3 --abi cp312 --abi none -d .whl diffusers==0.42.1 pytest==8.3.4 && rm .whl/numpy-*
#   mkdir -p .before && git archive b15f6cd lib_ctxrep | tar -x -C .before
# then run: bash tools/gpu_overhead.sh   (carry: [".whl", ".before"])
# Stages, to split the run over two device calls where one would pass its time limit: tests, after, before (default:
# all three, in that order), e.g. `bash tools/gpu_overhead.sh tests after` then `bash tools/gpu_overhead.sh before`.
set -uo pipefail
stages="${*:-tests after before}"
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/ctxrep_gpu}"
repeats="${REPEATS:-6}"
mkdir -p "$out"
py=python3
site="${PYTHONPATH:-}"
if compgen -G ".whl/*.whl" >/dev/null; then
  # a venv over the machine's packages (torch, Triton, numba): pip adds only what is missing
  if python3 -m venv --system-site-packages /tmp/ctxrep_venv >/dev/null 2>&1 &&
    /tmp/ctxrep_venv/bin/python -m pip install -q --no-index --find-links .whl diffusers pytest >"$out/pip.log" 2>&1; then
    py=/tmp/ctxrep_venv/bin/python
  else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/diffusers-*.whl .whl/importlib_metadata-*.whl .whl/zipp-*.whl || exit 1
    site=/tmp/site
  fi
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
PYTHONPATH="$site" $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" |
  tee -a "$out/device.txt"
if [[ " $stages " == *" tests "* ]] && PYTHONPATH="$site" $py -c "import pytest" 2>/dev/null; then
  PYTHONPATH="$site" timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_device_loop.py tests/test_kernels.py \
    2>&1 | tail -n 30 | tee "$out/gpu_tests.log"
fi
measure() {  # name, the folder that holds the library, then overhead's arguments
  local name=$1 library=$2
  shift 2
  echo "=== $name" | tee "$out/$name.log"
  # python -m puts the working folder first on the path: run from the library's folder
  (cd "$library" && PYTHONPATH="$site" timeout 300 $py -m lib_ctxrep overhead --spell-set 0 \
    --repeats "$repeats" "$@" 2>&1) | tee -a "$out/$name.log"
}
if [[ " $stages " == *" after "* ]]; then
  measure after_m8 "$PWD" --iterations 8
  measure after_m50 "$PWD" --iterations 50
fi
if [[ " $stages " == *" before "* ]] && [ -d .before/lib_ctxrep ]; then
  measure before_m8 "$PWD/.before" --iterations 8
  measure before_m50 "$PWD/.before" --iterations 50
fi
grep -h "^=== \|ratio inside\|whole 20-step\|side by side\|per hooked block,\|inner loop (\|device inner loop\|stream \[" \
  "$out"/after_*.log "$out"/before_*.log > "$out/summary.txt" 2>/dev/null
tail -n 1 "$out/gpu_tests.log" >> "$out/summary.txt" 2>/dev/null
