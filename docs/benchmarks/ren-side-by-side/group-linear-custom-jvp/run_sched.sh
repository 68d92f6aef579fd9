#!/bin/bash
cd /work/ren_home
export REN_HOME=/work/ren_home XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce FGC_CHECKOUT=/work/main
PY=/work/ren_home/venv/bin/python
mkdir -p logs results_sched
echo "== start $(date -Is)"; uptime
$PY harness.py --net m816 --algos bp,lg-fg-a,lg-bp --rounds 12 --warmup 2 --out results_sched > logs/m816_sched.log 2>&1
echo "== m816 done $(date -Is)"; uptime
$PY harness.py --net m116 --algos bp,lg-fg-a,lg-bp --rounds 40 --warmup 3 --out results_sched > logs/m116_sched.log 2>&1
echo "== m116 done $(date -Is)"; uptime
