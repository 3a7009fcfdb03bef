#!/usr/bin/env bash
# The GPU path, proven in one command on a lent GPU (issue 17; docs/device_check.md).
#
# A session whose task has a GPU (the device tool's `status`: can_start_another is true) runs, once,
# here (this machine reaches PyPI, the device machine reaches nothing):
#
#     make device-wheels            # ~29 MiB of Python 3.12 wheels into .whl/ (ignored by git)
#
# then ONE device-tool call (it copies the working tree; `carry` adds the ignored wheel folder):
#
#     run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=560)
#
# and reads the files it brings back (under files_at): summary.md first.
#
# What it does, each step under its own time limit, all of it under 500 s:
#   1. env.txt: nvidia-smi, Python, torch, CUDA, the GPU torch sees.
#   2. Installs the carried wheels (.whl/, or DEVICE_WHEELS) with pip --no-index --no-deps into a
#      fresh /tmp/site, puts it and this checkout on PYTHONPATH (the project itself is imported from
#      the checkout: nothing is built), and checks that Hydra, MLflow, MuJoCo (Hopper-v5), Minari
#      and the project import; `pip check` is logged, not enforced (the image's own versions).
#   3. cuda_tests.log: pytest tests/test_cuda.py -- compiled (CUDA graphs) vs eager on the GPU for
#      TD3+BC, EDAC and pre-training steps, Inductor's random numbers in graph replays, checkpoints
#      between CUDA and the CPU, launch.py with device=cuda to FINISHED.
#   4. bench_cuda.md: `make bench` on CUDA (python -m benchmarks.bench --device cuda): TD3+BC and
#      EDAC updates on Hopper shapes, CORL-style vs ours eager vs ours compiled, absolute updates/s,
#      share of the measured float32 and bf16 matmul peaks.
#   4b. profile_loop.md: torch.profiler over TD3+BC's run loop and its bare compiled step: the
#      loop's time per update split into sampling, the step and the Trainer's bookkeeping, and the
#      top entries (kernels on the GPU) of each (issue 26: why the GPU loop keeps 73% of the step).
#   5. runs_per_gpu.md: how many independent TD3+BC runs the GPU sustains side by side (1 and 8
#      processes, each a full update loop; aggregate updates/s).
#   6. summary.md: the lines that matter from each; device_check.log: everything printed.
# Results go to $OUT (set by the device tool; default device_check_out/ in the checkout).
#
# Without a CUDA device (here, or a machine whose torch sees no GPU) it is a dry run: steps 1-3 as
# far as a CPU allows (the CUDA tests skip, test_cuda.py's CPU tests run) and a small CPU smoke of
# step 4-5's machinery; it says "no CUDA device present" and exits with status 3.
# Exit status: 0 everything passed on a GPU, 1 a step failed, 2 the wheels or imports are missing,
# 3 no CUDA device (dry run).
#
# Environment: PYTHON (default python3: the image's, with torch), DEVICE_WHEELS (default .whl),
# DEVICE_SITE (default /tmp/site), OUT.

set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${DEVICE_WHEELS:-.whl}
SITE=${DEVICE_SITE:-/tmp/site}
OUT=${OUT:-$REPO/device_check_out}
BUDGET=500  # seconds for everything on a GPU (a 560 s call after a 1-2 min machine start fits the 15 min)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/device_check.log") 2>&1
status=0

step() { echo; echo "===== $* ($(date +%T), ${SECONDS}s elapsed)"; }
# limit GPU CPU: a step's seconds on a GPU (the smaller of GPU and what is left of the budget, at
# least 10) or in a dry run (CPU: no budget; a CPU compiles the steps far more slowly)
limit() {
  if [ "$CUDA" != 1 ]; then echo "$2"; return; fi
  local left=$((BUDGET - SECONDS)); [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"
}
# ran CODE NAME: say so when a step was stopped at its time limit
ran() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ] && echo "step '$2' ran out of its time limit"; [ "$1" -eq 0 ]; }
CUDA=0

step "1. environment"
{
  if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1; else echo "nvidia-smi: not installed"; fi
  "$PYTHON" - <<'EOF'
import platform, torch
print(f"Python {platform.python_version()} at {__import__('sys').executable}; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB; {torch.cuda.device_count()} GPU(s) visible")
EOF
} 2>&1 | tee "$OUT/env.txt"
CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$CUDA" != 1 ]; then
  echo "no CUDA device present: this is a dry run (the CUDA tests skip, the benchmark runs a CPU smoke)"
fi

step "2. install the carried wheels ($WHEELS) into $SITE"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  rm -rf "$SITE"
  timeout "$(limit 90 600)" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl || { echo "installing the wheels failed"; exit 2; }
  echo "$(ls "$WHEELS"/*.whl | wc -l) wheels installed"
else
  echo "no wheels in $WHEELS (make device-wheels, then carry=[\"$WHEELS\"]): using what $PYTHON already has"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'EOF' || { echo "the project cannot run here: a package is missing (see above)"; exit 2; }
import gymnasium, hydra, minari, mlflow, mujoco, omegaconf, sqlalchemy, submitit
import offline_rl.run, benchmarks.bench
env = gymnasium.make("Hopper-v5")
env.reset(seed=0)
print(f"imports fine: hydra {hydra.__version__}, mlflow {mlflow.__version__}, mujoco {mujoco.__version__}, "
      f"minari {minari.__version__}, gymnasium {gymnasium.__version__}; Hopper-v5 steps")
EOF
"$PYTHON" -m pip check 2>&1 | sed 's/^/pip check: /' | head -20

step "3. tests/test_cuda.py"
xdist=()
if [ "$CUDA" = 1 ] && "$PYTHON" -c "import xdist" 2>/dev/null; then xdist=(-n 4); fi
timeout -k 10 "$(limit 190 1800)" "$PYTHON" -m pytest tests/test_cuda.py -v -p no:cacheprovider --durations=0 \
    "${xdist[@]}" 2>&1 | tee "$OUT/cuda_tests.log"
ran $? tests || status=1

step "4. make bench ($([ "$CUDA" = 1 ] && echo CUDA || echo "CPU smoke"))"
if [ "$CUDA" = 1 ]; then
  bench=(--device cuda --algos td3_bc edac --shapes hopper --no-pretrain --reps 3 --window 0.5 --runs-per-gpu)
else  # the CPU smoke: one row, eager and compiled, the machinery only
  bench=(--device cpu --algos td3_bc --shapes hopper --no-pretrain --reps 1 --window 0.2 --rtg 0 --runs-per-gpu)
fi
timeout -k 10 "$(limit 190 1800)" "$PYTHON" -m benchmarks.bench "${bench[@]}" --out "$OUT/bench_cuda.md"
ran $? bench || status=1

step "4b. where a loop iteration goes (torch.profiler, TD3+BC)"
if [ "$CUDA" = 1 ]; then
  profile=(--device cuda --updates 2000)
else  # the CPU smoke: the machinery only
  profile=(--device cpu --updates 50 --transitions 10000 --rows 5)
fi
timeout -k 10 "$(limit 60 1800)" "$PYTHON" -m benchmarks.profile_loop "${profile[@]}" --out "$OUT/profile_loop.md"
ran $? profile || status=1

step "5. independent runs side by side"
if [ "$CUDA" = 1 ]; then
  runs=(--device cuda --runs-per-gpu 1 8 --runs-seconds 6)
else
  runs=(--device cpu --runs-per-gpu 1 2 --runs-seconds 2)
fi
timeout -k 10 "$(limit 110 1800)" "$PYTHON" -m benchmarks.bench "${runs[@]}" --algos --rtg 0 \
    --out "$OUT/runs_per_gpu.md"
ran $? runs || status=1

step "6. summary ($OUT/summary.md)"
{
  echo "# device check, $(date -u +%F) ($SECONDS s)"
  echo
  grep -m1 "^GPU 0\|^Python" "$OUT/env.txt"
  [ "$CUDA" = 1 ] || echo "**no CUDA device present: dry run on the CPU**"
  echo
  echo "tests/test_cuda.py: $(grep -E '^=+ .*(passed|failed|error|skipped).* =+$' "$OUT/cuda_tests.log" | tail -1 | tr -d '=')"
  grep -E "^(FAILED|ERROR) " "$OUT/cuda_tests.log" || true
  echo
  for f in bench_cuda.md profile_loop.md runs_per_gpu.md; do
    [ -f "$OUT/$f" ] && grep -E "^\||^[0-9]+x[0-9]+|^Measured|^Independent|^Failed|^Loop" "$OUT/$f"
    echo
  done
} > "$OUT/summary.md"
cat "$OUT/summary.md"

if [ "$CUDA" != 1 ]; then
  echo "no CUDA device present: dry run done (exit status 3); run this on a lent GPU (see the header)"
  exit 3
fi
[ "$status" -eq 0 ] && echo "device check passed" || echo "device check: a step failed (see above)"
exit "$status"
