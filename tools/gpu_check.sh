#!/usr/bin/env bash
# One prepared check for a CUDA machine (issue 11): is onnxruntime really on the GPU,
# and the benchmark rows of tools/bench_run.py with tfue and the naive script on CUDA.
#
#   bash tools/gpu_check.sh [extra bench_run.py options, e.g. --repeat 1 --only det]
#
# Exit 1 when CUDA is not really used (no CUDAExecutionProvider, a session that falls
# back to CPU, or a tfue summary whose provider is not CUDA); the benchmark's own exit
# code otherwise (124 when it ran past the time limit, 480 s in all).
# Results: $OUT/gpu_bench.md and $OUT/gpu_bench.json ($OUT defaults to a new temp folder).
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
OUT=${OUT:-$(mktemp -d)}
START=$(date +%s)
LIMIT=${GPU_CHECK_LIMIT:-480}

echo "== nvidia-smi -L"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; else echo "(nvidia-smi not found)"; fi

echo "== onnxruntime providers"
"$PY" - <<'PYEOF' || { echo "gpu_check: FAIL: CUDA is not really available to onnxruntime" >&2; exit 1; }
import sys
import onnxruntime as ort
avail = ort.get_available_providers()
print(f"onnxruntime {ort.__version__}, available providers: {avail}")
if "CUDAExecutionProvider" not in avail:
    print("gpu_check: CUDAExecutionProvider is missing (CPU-only onnxruntime, or no CUDA): "
          "install onnxruntime-gpu on a machine with an NVIDIA GPU", file=sys.stderr)
    sys.exit(1)
sess = ort.InferenceSession("models/srresnet_x2.onnx",
                            providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(f"a session asked for CUDA reports providers {sess.get_providers()}")
if sess.get_providers()[0] != "CUDAExecutionProvider":
    print("gpu_check: the session fell back to CPU: CUDA is listed but does not load "
          "(CUDA / cuDNN libraries missing or mismatched?)", file=sys.stderr)
    sys.exit(1)
PYEOF

echo "== bench_run.py on CUDA (results in $OUT)"
LEFT=$(( LIMIT - ($(date +%s) - START) ))
timeout "$LEFT" "$PY" tools/bench_run.py --only "${ONLY:-det,sr,start}" --provider cuda \
    "--tfue-args=--provider cuda" --md "$OUT/gpu_bench.md" --json "$OUT/gpu_bench.json" "$@"
RC=$?
if [ "$RC" -ne 0 ]; then echo "gpu_check: bench_run.py exited $RC" >&2; exit "$RC"; fi

"$PY" - "$OUT/gpu_bench.json" <<'PYEOF' || exit 1
import json, sys
data = json.load(open(sys.argv[1]))
said = {r["row"] + " --at " + r["depth"]: s.get("provider") for r in data["rows"]
        for s in r["summaries"]}
bad = {k: v for k, v in said.items() if "cuda" not in str(v).lower()}
if bad:
    print(f"gpu_check: FAIL: tfue did not run on CUDA: {bad}", file=sys.stderr)
    sys.exit(1)
print(f"gpu_check: OK: CUDA in onnxruntime, the naive script and every tfue summary ({len(said)})")
PYEOF
