#!/bin/bash
# The three side-by-side runs of BENCHMARKS §5.4, from $REN_HOME (the released files and the
# harness with harness-fgc-builder.patch applied), fgc's XLA flag exported for both tools:
#   bash run.sh results   "bp,lg-fg-a,lg-bp" 40         # run 1 (and run 3, after the schedule choice)
#   bash run.sh results_rep "bp,lg-fg-a" 100 --fgc-first # run 2 (which warmed M/1/16 up for 5 steps, not 3)
out=$1 algos=$2 m116_rounds=$3; shift 3
cd "${REN_HOME:?set REN_HOME}"
export XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce FGC_CHECKOUT=${FGC_CHECKOUT:?set FGC_CHECKOUT}
PY=$REN_HOME/venv/bin/python
mkdir -p logs "$out"
echo "== start $(date -Is)"; uptime
$PY harness.py --net m816 --algos "$algos" --rounds 12 --warmup 2 --out "$out" "$@" > "logs/m816_$out.log" 2>&1
echo "== m816 done $(date -Is)"; uptime
$PY harness.py --net m116 --algos "$algos" --rounds "$m116_rounds" --warmup 3 --out "$out" "$@" > "logs/m116_$out.log" 2>&1
echo "== m116 done $(date -Is)"; uptime
