#!/usr/bin/env bash
# The one GPU check: the CUDA tests (pytest -m gpu), then bench/gpu_flux.py for FLUX.1 [dev] and
# FLUX.2 [dev] sizes, each part under its own time limit (about 8 minutes at most in all).
#
#   scripts/gpu_check.sh --wheels   # on a machine with PyPI: put what the GPU machine lacks in .whl/
#   scripts/gpu_check.sh            # on the GPU machine: install .whl/ aside, run the checks
#
# The GPU machine this is written for has no network. Its python3 (3.12) holds a CUDA build of
# torch (2.11 when last seen), transformers, accelerate, safetensors, numpy, Pillow and pytest with
# pytest-timeout; it lacks diffusers and torchao. The project's .venv (a CPU torch for another
# Python) does not travel; the checks run under that python3 with src/ and this folder on the
# path and the wheels of .whl/ installed into /tmp/site (nothing of the machine's is replaced).
# Results and logs: $OUT if set (what comes back from such a machine), else bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers==0.42.1 torchao==0.18.0 importlib_metadata==8.7.0)

if [[ "${1:-}" == "--wheels" ]]; then
  # Wheels for CPython 3.12 on x86-64 Linux, without their dependencies (the machine has those).
  set -e
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  ls -l .whl
  exit 0
fi

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR"
failed=()

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: cannot install .whl/" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  'diffusers', diffusers.__version__)" || exit 1

part() {  # part NAME SECONDS COMMAND...: one part, its log in $OUT_DIR, its failure noted
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/gpu_check-$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  ((rc == 0)) || failed+=("$name (exit $rc)")
}

# The CUDA tests of tests/engines and tests/bench. Modules that need the server stack (not on
# that machine) fail to import; the rest still run, hence --continue-on-collection-errors.
part tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests/engines tests/bench
# --budget-s: start no variant after that, so each bench writes its JSON well inside its limit.
part flux 210 "$PY" -m bench.gpu_flux --out "$OUT_DIR" --repeats 2 --budget-s 150 \
  --variants eager,fuse_qkv,cache,fp8,compile+fp8,all,compile
part flux2 150 "$PY" -m bench.gpu_flux --family flux2 --out "$OUT_DIR" --repeats 1 --budget-s 90 \
  --variants eager,fp8,compile+fp8,all

if ((${#failed[@]})); then
  echo "gpu_check: failed: ${failed[*]}" >&2
  exit 1
fi
echo "gpu_check: all parts passed in $SECONDS s"
