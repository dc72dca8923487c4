#!/usr/bin/env bash
# One script for a GPU machine (written for one H200, 16 cores): every check of kdlab's GPU path within 8 minutes,
# each result a file under OUTDIR.
#
#   bash benchmarks/gpu_check.sh [OUTDIR] [DATA_ROOT]
#
#   OUTDIR     where every result goes (default: $OUT if set, else ./gpu-results)
#   DATA_ROOT  folder holding cifar-100-python/{train,test,meta} (default: $KDLAB_DATA); without it (b) runs on
#              synthetic CIFAR-shaped data and (c) is skipped, and the script says so
#
# (a) pytest -m gpu -q                                   -> pytest_gpu.log, pytest_gpu.xml
# (b) KD throughput: kdlab vs the reference loop vs torchdistill (benchmarks/reference_loop.py --device cuda),
#     resnet56->resnet20 and resnet32x4->resnet8x4, fp32 / channels_last / bf16 / bf16+channels_last, medians and
#     same-run ratios                                     -> throughput_kd.md, throughput_kd.json
#     compile off vs on for kdlab's KD step (benchmarks/compile_step.py), both pairs, bf16 and fp32, as many as the
#     budget allows                                        -> compile_<pair>_<precision>.md/.json
# (c) the CIFAR-100 recipe for resnet56->resnet20 (240 epochs, configs/cifar100/): the teacher first, then the
#     baseline and KD, DKD, DIST, CRD as concurrent processes sharing the GPU, each stopped by a wall-clock budget,
#     so only a prefix of the 240 epochs runs      -> recipe/<run>/, recipe_progress.md, recipe_report.md
# Every step has its own timeout (one failure cannot eat the budget); summary.md / summary.tsv list what ran.
#
# GPU_CHECK_SMOKE=1: the same steps on the CPU with tiny sizes (digits data for (c)), to check the script itself
# (under 3 minutes on 2 cores). GPU_CHECK_BUDGET=SECONDS changes the total budget (default 465, smoke 170);
# PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python3); GPU_CHECK_RECIPE_FLAGS adds
# flags to every run of (c) (e.g. "--precision bf16 --channels-last").
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${1:-${OUT:-./gpu-results}}
DATA_ROOT=${2:-${KDLAB_DATA:-}}
SMOKE=${GPU_CHECK_SMOKE:-0}
if [ "$SMOKE" = "1" ]; then BUDGET=${GPU_CHECK_BUDGET:-170}; else BUDGET=${GPU_CHECK_BUDGET:-465}; fi
RECIPE_FLAGS=${GPU_CHECK_RECIPE_FLAGS:-}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # this tree's kdlab, installed or not
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::DeprecationWarning}

mkdir -p "$OUTDIR/logs" "$OUTDIR/recipe" || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)
LOGS=$OUTDIR/logs
START=$(date +%s)
: > "$OUTDIR/summary.tsv"
cd "$REPO" || exit 2

elapsed() { echo $(( $(date +%s) - START )); }
remaining() { echo $(( BUDGET - $(elapsed) )); }
note() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$LOGS/gpu_check.log" >&2; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUTDIR/summary.tsv"; }

# limit REQUESTED RESERVE: the seconds a step may take, leaving RESERVE for what follows (and 15 s for killing)
limit() {
  local want=$1 reserve=$2 left
  left=$(( $(remaining) - reserve - 15 ))
  if [ "$left" -lt "$want" ]; then want=$left; fi
  echo "$want"
}

# step NAME SECONDS STDOUT_FILE CMD...: run CMD under its own timeout (SIGINT, then SIGKILL 10 s later); stdout to
# STDOUT_FILE (or the log when empty), stderr to logs/NAME.log; one line in summary.tsv
step() {
  local name=$1 seconds=$2 out=$3 rc t0 status
  shift 3
  if [ "$seconds" -lt 5 ]; then
    note "$name: not run (no time left in the ${BUDGET}s budget)"
    record "$name" "skipped: no time left" 0 "-"
    return 0
  fi
  note "$name: up to ${seconds}s: $*"
  t0=$(date +%s)
  if [ -n "$out" ]; then
    timeout --signal=INT --kill-after=10 "$seconds" "$@" > "$out" 2> "$LOGS/$name.log"
  else
    timeout --signal=INT --kill-after=10 "$seconds" "$@" > "$LOGS/$name.log" 2>&1
  fi
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${seconds}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" $(( $(date +%s) - t0 )) "${out:-$LOGS/$name.log}"
  note "$name: $status"
  return 0
}

# ------------------------------------------------------------------------------------------------ environment
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "repository: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "python: $PY"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '| available', torch.cuda.is_available(), '|',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1
  "$PY" -c "import torchvision; print('torchvision', torchvision.__version__)" 2>&1
  "$PY" -c "import torchdistill; print('torchdistill', torchdistill.__version__)" 2>&1 | tail -1
  nproc 2>/dev/null | sed 's/^/cpu cores: /'
  command -v nvidia-smi > /dev/null && nvidia-smi 2>&1
} > "$OUTDIR/environment.txt" 2>&1

if [ "$SMOKE" = "1" ]; then
  DEVICE=cpu
  note "smoke mode: CPU, tiny sizes, digits data for the recipe (checks the script, measures nothing)"
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    note "no CUDA GPU visible to $PY (see environment.txt): nothing to measure here; GPU_CHECK_SMOKE=1 runs the CPU smoke mode"
    record environment "failed: no CUDA GPU" 0 "$OUTDIR/environment.txt"
    exit 2
  fi
  DEVICE=cuda
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

HAVE_CIFAR=0
if [ -n "$DATA_ROOT" ] && [ -f "$DATA_ROOT/cifar-100-python/train" ] && [ -f "$DATA_ROOT/cifar-100-python/test" ] \
   && [ -f "$DATA_ROOT/cifar-100-python/meta" ]; then
  HAVE_CIFAR=1
  DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
  note "CIFAR-100 found in $DATA_ROOT"
elif [ "$SMOKE" != "1" ]; then
  note "CIFAR-100 not found (DATA_ROOT='${DATA_ROOT}' needs cifar-100-python/{train,test,meta}): (b) runs on synthetic data and (c) is skipped"
fi
RECIPE_RESERVE=0  # seconds kept for (c) while (a) and (b) run
if [ "$SMOKE" = "1" ]; then RECIPE_RESERVE=90; elif [ "$HAVE_CIFAR" = "1" ]; then RECIPE_RESERVE=200; fi

# ------------------------------------------------------------------------------------------------ (a) gpu tests
# The files holding gpu-marked tests (collecting the whole tree in one process is not how this suite runs: some test
# modules import helpers from their own directory's conftest.py).
mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort)
if [ "$SMOKE" = "1" ]; then B_RESERVE=40; else B_RESERVE=100; fi
step pytest_gpu "$(limit 90 $(( RECIPE_RESERVE + B_RESERVE )))" "" \
  "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml="$OUTDIR/pytest_gpu.xml" "${GPU_TESTS[@]}"

# ------------------------------------------------------------------------------------------------ (b) throughput
BENCH_DATA=()
if [ "$HAVE_CIFAR" = "1" ]; then BENCH_DATA=(--data-root "$DATA_ROOT"); fi
if [ "$SMOKE" = "1" ]; then
  step throughput_kd "$(limit 60 $(( RECIPE_RESERVE + 20 )))" "$OUTDIR/throughput_kd.md" \
    "$PY" benchmarks/reference_loop.py --quick --device cpu --threads 1 --models resnet20:resnet8 --ref-workers 0 \
    --modes fp32 --torchdistill no --json "$OUTDIR/throughput_kd.json"
  step compile_resnet8_fp32 "$(limit 60 "$RECIPE_RESERVE")" "$OUTDIR/compile_resnet8_fp32.md" \
    "$PY" benchmarks/compile_step.py --quick --threads 1 --backend eager --pair resnet8:resnet8 --device cpu \
    --json "$OUTDIR/compile_resnet8_fp32.json"
else
  step throughput_kd "$(limit 130 $(( RECIPE_RESERVE + 60 )))" "$OUTDIR/throughput_kd.md" \
    "$PY" benchmarks/reference_loop.py --device cuda --models resnet56:resnet20,resnet32x4:resnet8x4 \
    --ref-workers 8 --repeats 3 --iters 20 --warmup 5 "${BENCH_DATA[@]}" --json "$OUTDIR/throughput_kd.json"
  # Compilation takes tens of seconds per case: as many cases as fit before (c)'s reserve, in this order.
  for case in resnet56:resnet20:bf16 resnet56:resnet20:fp32 resnet32x4:resnet8x4:bf16 resnet32x4:resnet8x4:fp32; do
    pair=${case%:*}; precision=${case##*:}; tag="${pair/:/-}_$precision"
    step "compile_$tag" "$(limit 100 "$RECIPE_RESERVE")" "$OUTDIR/compile_$tag.md" \
      "$PY" benchmarks/compile_step.py --device cuda --precision "$precision" --pair "$pair" --repeats 3 --iters 20 \
      --warmup 3 --json "$OUTDIR/compile_$tag.json"
  done
fi

# ------------------------------------------------------------------------------------------------ (c) recipe
RECIPE=$OUTDIR/recipe
if [ "$SMOKE" = "1" ]; then
  DATA_FLAGS=(--data digits --epochs 1 --threads 1 --device cpu)
elif [ "$HAVE_CIFAR" = "1" ]; then
  DATA_FLAGS=(--data cifar100 --data-root "$DATA_ROOT" --device cuda)
else
  DATA_FLAGS=()
fi
# shellcheck disable=SC2206  # GPU_CHECK_RECIPE_FLAGS is a list of flags, split on spaces on purpose
EXTRA=($RECIPE_FLAGS)
if [ "${#DATA_FLAGS[@]}" -eq 0 ]; then
  record recipe "skipped: no CIFAR-100 data" 0 "-"
else
  COMMON=("${DATA_FLAGS[@]}" --logger none --log-every 200 "${EXTRA[@]}")
  # The teacher gets 40% of what is left, the students (concurrently) the rest, minus the report's 30 s.
  left=$(( $(remaining) - 30 ))
  step recipe_teacher "$(limit $(( left * 2 / 5 )) $(( left * 3 / 5 )))" "" \
    "$PY" -m kdlab train --config configs/cifar100/train/resnet56.yaml "${COMMON[@]}" --out "$RECIPE/teacher-resnet56"
  TEACHER=$RECIPE/teacher-resnet56/best.pt
  students=(baseline-resnet20)
  if [ -f "$TEACHER" ]; then students+=(kd dkd dist crd); else
    note "the teacher wrote no best.pt (not one epoch finished): distillation runs skipped"
    record recipe_students "skipped: no teacher checkpoint" 0 "-"
  fi
  seconds=$(limit 100000 30)
  pids=()
  for run in "${students[@]}"; do
    if [ "$run" = "baseline-resnet20" ]; then
      cmd=("$PY" -m kdlab train --config configs/cifar100/train/resnet20.yaml)
    else
      cmd=("$PY" -m kdlab distill --config "configs/cifar100/resnet56-resnet20/$run.yaml" --teacher "$TEACHER")
    fi
    step "recipe_$run" "$seconds" "" "${cmd[@]}" "${COMMON[@]}" --out "$RECIPE/$run" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  "$PY" - "$RECIPE" > "$OUTDIR/recipe_progress.md" 2> "$LOGS/recipe_progress.log" <<'EOF'
import json, statistics, sys
from pathlib import Path

import yaml

root = Path(sys.argv[1])
print("# CIFAR-100 recipe, resnet56 -> resnet20: what ran in the budget (a prefix of each run's schedule)\n")
print("| run | epochs done | of | last test top-1 % | best test top-1 % | median epoch s | median img/s |")
print("|---|---|---|---|---|---|---|")
for run in sorted(p for p in root.iterdir() if p.is_dir()):
    lines = []
    if (run / "metrics.jsonl").is_file():
        for text in (run / "metrics.jsonl").read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                pass
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    epochs = (config or {}).get("optim", {}).get("epochs", "?")
    top1 = [r["test_top1"] for r in lines if r.get("test_top1") is not None]
    cell = lambda values, f: f(values) if values else "-"  # noqa: E731
    print(f"| {run.name} | {len(lines)} | {epochs} | {cell(top1, lambda v: f'{v[-1]:.2f}')} | "
          f"{cell(top1, lambda v: f'{max(v):.2f}')} | "
          f"{cell([r['epoch_seconds'] for r in lines], lambda v: f'{statistics.median(v):.1f}')} | "
          f"{cell([r['images_per_sec'] for r in lines], lambda v: f'{statistics.median(v):.0f}')} |")
EOF
  progress_rc=$?
  record recipe_progress "$([ "$progress_rc" -eq 0 ] && echo ok || echo "failed (see logs/recipe_progress.log)")" 0 \
    "$OUTDIR/recipe_progress.md"
  # kdlab report covers finished runs (summary.json); runs stopped by the budget are listed as unfinished.
  step recipe_report "$(limit 25 0)" "$OUTDIR/recipe_report.md" "$PY" -m kdlab report "$RECIPE"
fi

# ------------------------------------------------------------------------------------------------ summary
{
  echo "# gpu_check summary"
  echo
  echo "mode: $([ "$SMOKE" = "1" ] && echo 'smoke (CPU)' || echo 'GPU'), device $DEVICE, budget ${BUDGET}s, took $(elapsed)s," \
       "data: $([ "$HAVE_CIFAR" = "1" ] && echo "CIFAR-100 in $DATA_ROOT" || echo 'no CIFAR-100 (synthetic for (b))')"
  echo
  if [ "$HAVE_CIFAR" = "1" ] && [ "$SMOKE" != "1" ]; then
    echo "A 240-epoch run does not fit in the budget: the recipe's runs stop at a prefix of their schedule (their epochs"
    echo "are in recipe_progress.md), and kdlab report, which reads finished runs only, then says 'no finished kdlab runs'."
    echo
  fi
  echo "| step | status | seconds | output |"
  echo "|---|---|---|---|"
  while IFS=$'\t' read -r name status seconds output; do
    echo "| $name | $status | $seconds | ${output#"$OUTDIR"/} |"
  done < "$OUTDIR/summary.tsv"
} > "$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
exit 0
