#!/usr/bin/env bash
# The GPU checks of issue 14 in one run: the CUDA tests, then the GPU benchmarks, every figure
# printed with its target as it comes, a JSON summary in $OUT/summary.json (and the full log in
# $OUT/run.log). Budgeted for under 5 minutes on one H200 with 16 cores: every stage runs under
# `timeout`, with at most its budget and never past the overall deadline, so a stuck stage
# cannot eat the others.
#
#   bash tests/gpu/run.sh                 # on the GPU machine (carry .whl: the wheels below)
#   bash tests/gpu/run.sh --cpu-dry-run   # here, on the CPU: tiny sizes, CUDA-only parts skip,
#                                         # imports the GPU image lacks are blocked
#
# The GPU image has Python 3.12 with torch, numpy, pandas, scipy, scikit-learn, safetensors,
# matplotlib, xarray, pytest, tqdm and psutil, but not param, weightwatcher (and its powerlaw,
# matplotlib-inline, traitlets) or pytest-timeout: their wheels are carried in .whl/ and
# installed into $SITE. nnvitals' analyses import neither holoviews, panel, bokeh nor dask on
# these paths.
set -u
cd "$(dirname "$0")/../.."

DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/nnv-gpu-out}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/nnv-gpu-work}
DEADLINE_S=${DEADLINE_S:-285}   # overall wall budget (the run must finish in under 300 s)
[[ $DRY == 1 ]] && DEADLINE_S=${DRY_DEADLINE_S:-900}  # this shared 2-core machine is slower
mkdir -p "$OUT" "$WORK"
LOG="$OUT/run.log"
: > "$LOG"
START=$(date +%s)

say() { echo "$@" | tee -a "$LOG"; }

if ls .whl/*.whl > /dev/null 2>&1; then
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
export NNVITALS_IN_RUN_SH=1

if [[ $DRY == 1 ]]; then
  # what the GPU image lacks must not be needed: make those imports fail here too
  mkdir -p "$WORK/blocker"
  cat > "$WORK/blocker/sitecustomize.py" << 'EOF'
import os
import sys

_BLOCK = {n for n in os.environ.get("NNVITALS_BLOCK_IMPORTS", "").split(",") if n}


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            raise ImportError(f"{name}: not installed on the GPU image (blocked in the CPU dry run)")
        return None


if _BLOCK:
    sys.meta_path.insert(0, _Blocked())
EOF
  export PYTHONPATH="$WORK/blocker:$PYTHONPATH"
  export NNVITALS_BLOCK_IMPORTS=holoviews,panel,bokeh,dask,distributed,pyviz_comms
  DEV=cpu
else
  DEV=cuda
fi

TIMEOUT_FLAG=""
"$PY" -c "import pytest_timeout" 2> /dev/null && TIMEOUT_FLAG="--timeout=60"

# stage NAME BUDGET_S COMMAND...: run under timeout (its budget, capped by the deadline)
stage() {
  local name=$1 budget=$2
  shift 2
  local now left t0 rc
  now=$(date +%s)
  left=$((DEADLINE_S - (now - START) - 8))
  ((budget > left)) && budget=$left
  if ((budget < 5)); then
    say "=== stage $name rc=-1 wall=0s (skipped: no time left)"
    return
  fi
  say "=== stage $name: budget ${budget}s, $((now - START))s elapsed"
  t0=$(date +%s)
  timeout --kill-after=5 "$budget" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "=== stage $name rc=$rc wall=$(($(date +%s) - t0))s"
}

stage env 30 "$PY" -c "
import torch, sys, os
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', os.cpu_count())
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU)')
import analyses, param
print('nnvitals', analyses.__version__, 'param', param.__version__)
try:
    import weightwatcher
    print('weightwatcher', weightwatcher.__version__)
except Exception as e:
    print('weightwatcher not importable:', type(e).__name__)
"

if [[ $DRY == 1 ]]; then
  stage tests 120 "$PY" -m pytest -v --tb=short -p no:cacheprovider -o addopts="" $TIMEOUT_FLAG \
    tests/gpu tests/unit/test_device.py
  stage spectra 150 "$PY" tests/benchmarks/bench_gpu_spectra.py --device cpu --blocks 1 --hidden 256 \
    --diagnostics --est70b small --dir "$WORK" --json "$OUT/spectra.json"
  stage orbits 60 "$PY" tests/benchmarks/bench_gpu_orbits.py --device cpu --small --json "$OUT/orbits.json"
  stage bounds 60 "$PY" tests/benchmarks/bench_gpu_bounds.py --device cpu --small --json "$OUT/bounds.json"
  stage connectivity 60 "$PY" tests/benchmarks/bench_gpu_connectivity.py --device cpu --small \
    --json "$OUT/connectivity.json"
else
  stage tests 80 "$PY" -m pytest -v --tb=short -p no:cacheprovider -o addopts="" $TIMEOUT_FLAG tests/gpu
  stage spectra 125 "$PY" tests/benchmarks/bench_gpu_spectra.py --device cuda --blocks 32 --hidden 4096 \
    --diagnostics --est70b full --dir "$WORK" --json "$OUT/spectra.json"
  stage orbits 35 "$PY" tests/benchmarks/bench_gpu_orbits.py --device cuda --json "$OUT/orbits.json"
  stage bounds 25 "$PY" tests/benchmarks/bench_gpu_bounds.py --device cuda --json "$OUT/bounds.json"
  stage connectivity 20 "$PY" tests/benchmarks/bench_gpu_connectivity.py --device cuda \
    --json "$OUT/connectivity.json"
fi
rm -rf "$WORK"/llama* 2> /dev/null
"$PY" tests/gpu/summarize.py "$LOG" "$OUT/summary.json"
echo "total wall $(($(date +%s) - START)) s"
