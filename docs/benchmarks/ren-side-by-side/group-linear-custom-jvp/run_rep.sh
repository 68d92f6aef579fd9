#!/bin/bash
cd /work/ren_home
export REN_HOME=/work/ren_home XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce FGC_CHECKOUT=/work/main
PY=/work/ren_home/venv/bin/python
mkdir -p logs results_hybrid_rep
echo "== start $(date -Is)"; uptime
$PY harness.py --net m816 --algos bp,lg-fg-a --rounds 12 --warmup 2 --fgc-first --out results_hybrid_rep > logs/m816_hybrid_rep.log 2>&1
echo "== m816 done $(date -Is)"; uptime
$PY harness.py --net m116 --algos bp,lg-fg-a --rounds 100 --warmup 5 --fgc-first --out results_hybrid_rep > logs/m116_hybrid_rep.log 2>&1
echo "== m116 done $(date -Is)"; uptime
