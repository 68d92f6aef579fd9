#!/usr/bin/env bash
# The device checks of BENCHMARKS.md §9 in one short run (about 5 minutes on one GPU):
# the host overhead A/B, bfloat16 against float32 (updates and alternated step times), and
# `fgc bench` under each precision. Writes into ${OUT:-/tmp/gpu-host-precision}.
set -euo pipefail
out=${OUT:-/tmp/gpu-host-precision}
mkdir -p "$out"
export PYTHONPATH=$PWD
python examples/host_overhead.py --batch-size 128 1 --steps 300 --warmup 10 \
    --json "$out/host-overhead-m-1-16.json" 2>&1 | tee "$out/host-overhead.txt"
python examples/precision_check.py --spec specs/mixer-m-1-16.fg --algorithms bp,lg-fg-a \
    --batch-size 128 --time 200 2>&1 | tee "$out/precision-m-1-16.txt"
for p in default float32 bfloat16; do
  python -m fgc.tools.cli bench specs/mixer-m-8-16.fg --algorithms bp,lg-fg-a --steps 20 \
      --no-replicated --precision "$p" --json "$out/bench-m-8-16-$p.json" 2>/dev/null \
      | tee "$out/bench-m-8-16-$p.txt"
done
