#!/usr/bin/env bash
# Every CPU figure of docs/PERFORMANCE.md, one after another (nothing else should run meanwhile):
#   bash benchmarks/cpu_report.sh OUT_DIR        (about 30 minutes on 2 cores)
set -euo pipefail
out=${1:?give an output folder}
mkdir -p "$out"
sg=.venv/bin/stopgrad
py=.venv/bin/python
lscpu > "$out/lscpu.txt"
$sg bench --json "$out/bench-default.json" > "$out/bench-default.md"
$sg bench --no-amp --json "$out/bench-fp32.json" > "$out/bench-fp32.md"
$py benchmarks/profile_step.py > "$out/profile-default.txt"
$py benchmarks/profile_step.py --no-amp > "$out/profile-fp32.txt"
# bfloat16 vs float32 learning, one epoch of the default run, three seeds
for seed in 1 2 3; do
  for amp in amp no-amp; do
    $sg train --epochs 1 --seed "$seed" --"$amp" --no-progress --out "$out/runs/$amp-$seed" > "$out/$amp-$seed.log"
  done
done
# the default run, timed end to end
/usr/bin/time -f "%e s wall" -o "$out/default-run-time.txt" $sg train --no-progress --out "$out/runs/default" > "$out/default-run.log"
$py benchmarks/compare_policies.py --epochs 1 --markdown "$out/results-fashion-mnist.md" > "$out/compare.log"
# layout, compilation and width (stopgrad's own step only)
$sg bench --no-channels-last --no-conventional --no-knn --json "$out/bench-nchw.json" > /dev/null
$sg bench --compile --no-conventional --no-knn --json "$out/bench-compile.json" > /dev/null
$sg bench --width 32 --no-conventional --no-knn --json "$out/bench-width32.json" > /dev/null
# the batched augmentation against Kornia's (pip install kornia)
$sg bench --kornia --no-conventional --no-knn --json "$out/bench-kornia.json" > /dev/null
$sg train --epochs 1 --batch-size 64 --no-progress --out "$out/runs/batch64" > "$out/batch64.log"
# decoding cost of streamed image folders
$py benchmarks/decode.py > "$out/decode.md"
