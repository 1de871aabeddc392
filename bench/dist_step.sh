#!/usr/bin/env bash
# Data-parallel step time, both sides in one run: 2 ranks x 1 thread (mpirun) against 1 rank x
# 2 threads, full fine-tuning and LoRA, on the width-512 benchmark model (bench/dist_step.cpp).
# Usage: bench/dist_step.sh [build dir, default build/release] [steps, default 6]
set -euo pipefail
build="${1:-build/release}"
steps="${2:-6}"
bin="$build/bench/sora_bench_dist"
[ -x "$bin" ] || { echo "build it first: cmake --build $build --target sora_bench_dist" >&2; exit 1; }
for method in lora full; do
  two=$(OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
        "$bin" --method "$method" --threads 1 --steps "$steps")
  one=$(OMP_NUM_THREADS=2 "$bin" --method "$method" --threads 2 --steps "$steps")
  echo "$two"
  echo "$one"
  ms2=$(sed -E 's/.*: ([0-9.]+) ms\/step.*/\1/' <<<"$two")
  ms1=$(sed -E 's/.*: ([0-9.]+) ms\/step.*/\1/' <<<"$one")
  awk -v a="$ms2" -v b="$ms1" -v m="$method" \
    'BEGIN { printf "%s: 2 ranks x 1 thread / 1 rank x 2 threads = %.2f (step time ratio)\n", m, a / b }'
done
