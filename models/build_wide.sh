#!/usr/bin/env bash
# Rebuild the wider reference set (srresnet64_x2*: 64 channels, 6 blocks) and check it.
#
#   PY=/work/models-venv/bin/python CHECK_PY=.venv/bin/python models/build_wide.sh
#
# Same environment as models/build_all.sh (which builds the small set; WIDE=1 there
# runs this script after it). Sequential, one thread each: about 60-90 minutes of CPU.
# STEPS: plain and mcdropout steps (default 3000); ENS_STEPS: each ensemble member's
# (default 1000: the members get a third of the steps, to fit the time budget).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
CHECK_PY=${CHECK_PY:-.venv/bin/python}
LOGDIR=${LOGDIR:-/tmp/srlogs}
STEPS=${STEPS:-3000}
ENS_STEPS=${ENS_STEPS:-1000}
mkdir -p "$LOGDIR"

build() {  # name, steps, args...
    local name=$1 steps=$2; shift 2
    echo "== $name"
    "$PY" models/build_srresnet.py "$@" --channels 64 --blocks 6 --steps "$steps" \
        --eval-every 1000 --out "models/$name.onnx" --ref "$LOGDIR/$name.ref.npz" \
        > "$LOGDIR/$name.log" 2>&1
    grep -E '^(step [0-9]+ held-out|SUMMARY)' "$LOGDIR/$name.log" | tail -2
}

build srresnet64_x2 "$STEPS" --variant plain --seed 0
build srresnet64_x2_mcdropout "$STEPS" --variant mcdropout --seed 0
for k in 0 1 2 3; do
    build "srresnet64_x2_ensemble_$k" "$ENS_STEPS" --variant ensemble --member "$k" --seed "$((10 + k))"
done

if [ -x "$CHECK_PY" ]; then
    "$CHECK_PY" models/check_onnx.py models/srresnet64_x2*.onnx --refs "$LOGDIR"
fi
