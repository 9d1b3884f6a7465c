#!/usr/bin/env bash
# Issue 17's GPU measurement in one run: `python -m lib_ctxrep overhead` at full Flux-dev shape (19 double + 38 single
# blocks, bf16, B = 4, 1024x1024, 512 text tokens) for M = 8 and 50 with every single block on all tokens, M = 8 on
# text only, and M = 50 again with the torch Gram/combination and the numpy host loop (the implementations that run
# without Triton and numba). About 5 minutes on an H100/H200; each run's log goes to $OUT (or /tmp/ctxrep_gpu).
#
# On the lent GPU machine (no network; diffusers is not installed there), carry its wheels in .whl, made here with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
# then run: bash tools/gpu_overhead.sh   (carry: [".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/ctxrep_gpu}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
measure() {  # name, then overhead's arguments
  local name=$1
  shift
  python3 -m lib_ctxrep overhead --spell-set 0 "$@" 2>&1 | tee "$out/$name.log"
}
measure m8_all --iterations 8 --single-mode all
measure m50_all --iterations 50 --single-mode all
measure m8_text --iterations 8 --single-mode text
CTXREP_KERNELS=torch CTXREP_HOST_LOOP=numpy measure m50_all_torch_numpy --iterations 50 --single-mode all
