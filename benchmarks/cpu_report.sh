#!/usr/bin/env bash
# Every CPU figure of docs/PERFORMANCE.md, one after another (nothing else should run meanwhile):
#   bash benchmarks/cpu_report.sh OUT_DIR        (about 30 minutes on 2 cores)
# The figures were measured on the earlier default backbone, small-cnn (lr 0.2, 8 epochs, kNN after every
# epoch); $early pins it, so that the script re-creates them after the default moved to small-cnn-grid.
set -euo pipefail
early="--backbone small-cnn"
early_run="--backbone small-cnn --epochs 8 --eval-every 1"
out=${1:?give an output folder}
mkdir -p "$out"
sg=.venv/bin/stopgrad
py=.venv/bin/python
lscpu > "$out/lscpu.txt"
$sg bench $early --json "$out/bench-default.json" > "$out/bench-default.md"
$sg bench $early --no-amp --json "$out/bench-fp32.json" > "$out/bench-fp32.md"
$py benchmarks/profile_step.py $early > "$out/profile-default.txt"
$py benchmarks/profile_step.py $early --no-amp > "$out/profile-fp32.txt"
# bfloat16 vs float32 learning, one epoch of the default run, three seeds
for seed in 1 2 3; do
  for amp in amp no-amp; do
    $sg train $early_run --epochs 1 --seed "$seed" --"$amp" --no-progress --out "$out/runs/$amp-$seed" > "$out/$amp-$seed.log"
  done
done
# the default run, timed end to end
/usr/bin/time -f "%e s wall" -o "$out/default-run-time.txt" $sg train $early_run --no-progress --out "$out/runs/default" > "$out/default-run.log"
$py benchmarks/compare_policies.py --epochs 1 --markdown "$out/results-fashion-mnist.md" > "$out/compare.log"
# layout, compilation and width (stopgrad's own step only)
$sg bench $early --no-channels-last --no-conventional --no-knn --json "$out/bench-nchw.json" > /dev/null
$sg bench $early --compile --no-conventional --no-knn --json "$out/bench-compile.json" > /dev/null
$sg bench $early --width 32 --no-conventional --no-knn --json "$out/bench-width32.json" > /dev/null
# the batched augmentation against Kornia's (pip install kornia)
$sg bench $early --kornia --no-conventional --no-knn --json "$out/bench-kornia.json" > /dev/null
$sg train $early_run --epochs 1 --batch-size 64 --no-progress --out "$out/runs/batch64" > "$out/batch64.log"
# decoding cost of streamed image folders
$py benchmarks/decode.py > "$out/decode.md"
