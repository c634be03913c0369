#!/usr/bin/env bash
# The GPU path in one run, under 8 minutes on one GPU: the CUDA tests, the benchmark on
# CUDA and one short-schedule burda2016 MNIST bundle (lvmbench train, then lvmbench
# evaluate of one member). Every number lands in OUT_DIR/gpu_check.json; each step's log
# is OUT_DIR/<step>.log.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else results/gpu_check)
#
# Needs torch with CUDA and lvmbench's dependencies (the checkout is put on PYTHONPATH, so
# lvmbench itself need not be installed), pytest for the tests, and MNIST's gzip files in
# $LVMBENCH_DATA/mnist (default: shared/data or ../shared/data of the checkout) for the
# bundle. Pyro and pythae are measured when installed (pip install -e '.[bench]'), else
# reported missing. Each step has its own time limit (seconds, overridable from the
# environment); a failed or stopped step is recorded and the next one runs. DEVICE=cpu runs
# the same steps on the CPU (to try the script out; the limits are sized for a GPU).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT_DIR="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${LVMBENCH_DATA:-}" ]]; then
  for dir in "$REPO/shared/data" "$REPO/../shared/data"; do
    if [[ -d "$dir/mnist" ]]; then export LVMBENCH_DATA="$dir"; break; fi
  done
fi
TESTS_S="${TESTS_S:-80}"              # tests/test_gpu.py
BENCH_S="${BENCH_S:-120}"             # benchmark: train, eval, projection
BUNDLE_S="${BUNDLE_S:-120}"           # benchmark: bundles, in process and end to end
BURDA_TRAIN_S="${BURDA_TRAIN_S:-90}"  # the short bundle's training, stopped there if unfinished
BURDA_EVAL_S="${BURDA_EVAL_S:-40}"    # L_5000 on the 10,000 test points of its first member
STEPS="$OUT_DIR/steps.tsv"
: > "$STEPS"

step() {  # step NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds; record exit status and seconds
  local name="$1" limit="$2" rc=0 start="$SECONDS"
  shift 2
  echo "[gpu_check] $name (at most ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$STEPS"
  echo "[gpu_check] $name: exit $rc after $((SECONDS - start)) s$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)')"
  tail -n 40 "$OUT_DIR/$name.log"
}

step environment 30 "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
step nvidia_smi 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step tests "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py
step bench "$BENCH_S" "$PY" benchmarks/bench.py --device "$DEVICE" --only train,eval,projection --seconds 1 --rounds 3 \
  --out "$OUT_DIR/bench.json"
step bundle "$BUNDLE_S" "$PY" benchmarks/bench.py --device "$DEVICE" --only bundle --seconds 1 --rounds 3 \
  --bundle-sizes 1,16,64 --process-rounds 1 --out "$OUT_DIR/bundle.json"
step burda_short $((BURDA_TRAIN_S + BURDA_EVAL_S + 40)) "$PY" benchmarks/bench.py --device "$DEVICE" --only burda_short \
  --burda-train-timeout "$BURDA_TRAIN_S" --burda-eval-timeout "$BURDA_EVAL_S" --out "$OUT_DIR/burda_short.json"

"$PY" - "$OUT_DIR" <<'EOF'
"""Merge the steps' statuses and the benchmark's JSON files into gpu_check.json."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, limit = line.split("\t")
    log = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()
    steps[name] = {"exit": int(rc), "seconds": int(seconds), "limit_s": int(limit),
                   "timed_out": rc in ("124", "137"), "log_tail": log[-5:]}
summary = {"steps": steps, "total_seconds": sum(s["seconds"] for s in steps.values())}
for part in ("bench", "bundle", "burda_short"):
    path = out / f"{part}.json"
    summary[part] = json.loads(path.read_text())["results"] if path.exists() else None
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"[gpu_check] {summary['total_seconds']} s in all; numbers in {out / 'gpu_check.json'}")
for name, s in steps.items():
    print(f"  {name}: exit {s['exit']} after {s['seconds']} s{' (time limit)' if s['timed_out'] else ''}")
EOF
