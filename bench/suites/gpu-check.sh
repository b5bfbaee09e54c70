#!/usr/bin/env bash
# Issue 14 item 4's GPU figures, prepared for one lent GPU in two commands (each within the device tool's 10-minute
# command limit). Run from the repository root, with what the GPU machine lacks carried beside the tree:
#
#   here, once:   pip wheel --no-deps -w .whl nflows==0.14 FrEIA==0.2 zuko==1.6.0 normflows==1.7.3 memcnn==1.5.2
#                 mkdir -p .data && cp /usr/share/datasets/fashion-mnist/*.gz .data/   # dataset-fashion-mnist
#                 (.whl/ and .data/ are in .gitignore)
#   device runs:  bash bench/suites/gpu-check.sh speed    then    bash bench/suites/gpu-check.sh 784
#                 (carry: .whl, .data; what each writes lands in $OUT; about 3 and 6 minutes)
#
# What it measures, each side by side on that one machine:
# speed: training steps/s of the digits models, the quick suite's likelihood and classification cells for
#    iresnet-native, resflow-native, glow-freia, realnvp-nflows and revnet-native: `quick` on two CPU cores
#    (taskset 0,1, two workers of one thread, as on the 2-core development machine) against `quick-gpu` (batch
#    512, compiled with CUDA graphs, four workers sharing the GPU); `invbench speedup` writes the ratios to
#    $OUT/speedup.md (target: >= 3x);
# 784:   the D = 784 cells of bench/suites/gpu-check.toml (likelihood scoring <= 30 s, a stability cell <= 60 s),
#    one worker so that no other process shares the GPU; their seconds go to $OUT/cells-784.txt. The stability
#    session continues the likelihood session's run directory (--resume --allow-changed: a second session with
#    its own task list, recorded in run.json) so that it reuses the trained checkpoints; a stability cell is
#    stopped at 200 s (a `timeout` row with its seconds), so the command ends in time.
# Without a GPU, GPU_CHECK_DEVICE=cpu runs the CPU halves only (speed: the CPU baseline; 784: the cells on the CPU).
set -euo pipefail
PART=${1:?usage: gpu-check.sh speed|784}
OUT=${OUT:-runs/gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
BENCH="python3 -m bench"
$BENCH list >/dev/null  # every adapter imports before any device time is spent on cells
RUNS=$(mktemp -d)
if [ "$PART" = speed ]; then
MODELS="iresnet-native resflow-native glow-freia realnvp-nflows revnet-native"
TWO_CORES="taskset -c 0,1"
command -v taskset >/dev/null || { TWO_CORES=""; echo "no taskset: the CPU baseline uses every core" >&2; }
$TWO_CORES $BENCH run --suite quick --device cpu --models $MODELS --datasets digits-flat \
    --tasks likelihood classification --seeds 1 --executor pool --workers 2 --quiet --out "$RUNS/cpu"
if [ "$DEVICE" = cuda ]; then
    $BENCH run --suite quick-gpu --models $MODELS --datasets digits-flat --tasks likelihood classification \
        --seeds 1 --executor pool --workers 4 --quiet --out "$RUNS/gpu"
    $BENCH speedup "$RUNS/cpu" "$RUNS/gpu" -o "$OUT/speedup.md"
fi
elif [ "$PART" = 784 ]; then
$BENCH run --suite bench/suites/gpu-check.toml --device "$DEVICE" --data-dir .data --tasks likelihood \
    --executor pool --workers 1 --quiet --out "$RUNS/784"
$BENCH run --suite bench/suites/gpu-check.toml --device "$DEVICE" --data-dir .data --tasks stability \
    --executor pool --workers 1 --timeout 200 --quiet --resume --allow-changed --out "$RUNS/784"
python3 - "$RUNS/784" > "$OUT/cells-784.txt" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
train = {}
for line in (run / "results.jsonl").read_text().splitlines():
    row = json.loads(line)
    if row.get("metric") == "train_time" and row.get("task") == "likelihood":
        train[row["model"]] = row.get("value")
for line in (run / "cells.jsonl").read_text().splitlines():
    cell = json.loads(line)
    spent = cell["seconds"]
    note = ""
    if cell["task"] == "likelihood" and train.get(cell["model"]) is not None:
        note = f", scoring and the rest {spent - train[cell['model']]:.1f} s after {train[cell['model']]:.1f} s of training"
    print(f"{cell['model']} {cell['dataset']} {cell['task']}: {cell['status']}, cell {spent:.1f} s{note}")
PY
cat "$OUT/cells-784.txt"
else
    echo "unknown part $PART: speed or 784" >&2
    exit 2
fi
for d in cpu gpu 784; do
    [ -d "$RUNS/$d" ] && cp "$RUNS/$d/cells.jsonl" "$OUT/cells-$d.jsonl" && cp "$RUNS/$d/results.jsonl" "$OUT/results-$d.jsonl"
done
ls -la "$OUT"
