#!/usr/bin/env bash
# The whole CUDA path of stopgrad in one command, sized for under 8 minutes on one H100/H200:
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. the tests that need CUDA (pytest -m cuda): bfloat16 + channels-last step against fp32, fused SGD
#    against foreach, device-side generators, exact resume on the GPU, roi_align views against the
#    CPU's, kNN on the device;
# 2. `stopgrad bench` of the CIFAR-shaped ResNet-18 config (cifar10/byol-gsg on 3x32x32 images) against
#    the conventional per-image pipeline and Kornia's batched augmentation, in the same run, with the
#    kNN of 10,000 queries against 60,000 features;
# 3. `stopgrad bench` of the default small-CNN run on the GPU;
# 4. `stopgrad reproduce gsg-table1 --budget gpu-quick` and `stopgrad reproduce shootout --budget gpu-quick`
#    (Fashion-MNIST, CIFAR ResNet-18, one seed).
#
# Every step's output goes to OUT_DIR/<step>.log (figures as JSON where the command writes them) and
# one line per step to OUT_DIR/summary.txt: its exit status and seconds. A failing step does not stop
# the others; the script exits non-zero when any failed. Each step has a time limit, so the whole
# check ends in bounded time even on a slower device.
#
# Environment: PYTHON (default .venv/bin/python, else python3) with stopgrad installed; STOPGRAD_DATA,
# a folder holding the four Fashion-MNIST IDX files (default: Debian's /usr/share/datasets/fashion-mnist);
# WHEELS (optional), a folder of wheels installed offline first (e.g. kornia, kornia_rs for Kornia).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?give an output folder: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
export STOPGRAD_DATA=${STOPGRAD_DATA:-/usr/share/datasets/fashion-mnist}
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$out/cache}
summary="$out/summary.txt"
: > "$summary"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its output, record status and time
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] || failed=1
  echo "$name: exit $rc, $((SECONDS - start)) s$([ "$rc" -eq 124 ] && echo " (time limit $limit s)")" | tee -a "$summary"
}

if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  step wheels 120 "$py" -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
step versions 60 "$py" -c "import torch, torchvision, stopgrad; print('stopgrad', stopgrad.__version__, \
'torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda); \
assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

step cuda-tests 150 "$py" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
kornia=$("$py" -c "import kornia" 2>/dev/null && echo --kornia)
step bench-resnet18 120 "$py" -m stopgrad bench --config cifar10/byol-gsg --synthetic 3x32x32 $kornia \
  --json "$out/bench-resnet18.json"
step bench-default 60 "$py" -m stopgrad bench --no-conventional --json "$out/bench-default.json"
step gsg-table1 120 "$py" -m stopgrad reproduce gsg-table1 --budget gpu-quick --out "$out/gsg-table1"
step shootout 210 "$py" -m stopgrad reproduce shootout --budget gpu-quick --out "$out/shootout"
echo "total: $SECONDS s; logs and results in $out" | tee -a "$summary"
exit $failed
