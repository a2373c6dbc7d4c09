#!/usr/bin/env bash
# Rebuild every reference model, the demo data and check them.
#
#   PY=/work/models-venv/bin/python CHECK_PY=.venv/bin/python models/build_all.sh
#
# PY: a Python with torch==2.13.0 (CPU), scikit-image, scikit-learn, onnx,
#     numpy, pillow (see models/README.md).
# CHECK_PY: a Python with onnx + onnxruntime (the project's .venv); skipped if absent.
# LOGDIR: where raw training logs and reference .npz files go (default /tmp/srlogs).
# Sequential, one thread each: about 30 minutes of CPU in all.
# WIDE=1: then also build the wider set (models/build_wide.sh, about 80 more minutes;
# WIDE_STEPS / ENS_STEPS set its step counts).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
CHECK_PY=${CHECK_PY:-.venv/bin/python}
LOGDIR=${LOGDIR:-/tmp/srlogs}
STEPS=${STEPS:-2000}
mkdir -p "$LOGDIR"

build() {  # name, args...
    local name=$1; shift
    echo "== $name"
    "$PY" models/build_srresnet.py "$@" --steps "$STEPS" --out "models/$name.onnx" \
        --ref "$LOGDIR/$name.ref.npz" > "$LOGDIR/$name.log" 2>&1
    grep -E '^(step [0-9]+ held-out|SUMMARY)' "$LOGDIR/$name.log" | tail -2
}

build srresnet_x2 --variant plain --seed 0
build srresnet_x2_mcdropout --variant mcdropout --seed 0
for k in 0 1 2 3; do
    build "srresnet_x2_ensemble_$k" --variant ensemble --member "$k" --seed "$((10 + k))"
done

mkdir -p tfue_onnx/data
cp models/srresnet_x2.onnx tfue_onnx/data/srresnet_x2.onnx
"$PY" models/make_samples.py --dest tfue_onnx/data

if [ -x "$CHECK_PY" ]; then
    "$CHECK_PY" models/check_onnx.py models/srresnet_x2*.onnx tfue_onnx/data/srresnet_x2.onnx \
        --refs "$LOGDIR"
fi

if [ "${WIDE:-0}" = 1 ]; then
    PY="$PY" CHECK_PY="$CHECK_PY" LOGDIR="$LOGDIR" STEPS="${WIDE_STEPS:-3000}" \
        ENS_STEPS="${ENS_STEPS:-1000}" models/build_wide.sh
fi
