# fgc bench with fgc's XLA flag (off = YNN fusions off, fgc's default now) and without it
# (on = jaxlib 0.10's own YNN fusions), alternated; same machine, same minutes.
cd /work/main
for r in 1 2; do
  for m in off on; do
    if [ $m = off ]; then
      fgc bench $SPEC --algorithms $ALGOS --batch-size 128 --steps $STEPS --warmup 3 --no-replicated --json /work/runs/ynn/$NAME-$m-$r.json > /work/runs/ynn/$NAME-$m-$r.txt 2>&1
    else
      python3 -c "import sys, types; s = types.ModuleType('fgc.xla_flags'); s.apply = lambda *a: (); sys.modules['fgc.xla_flags'] = s; from fgc.tools.cli import main; sys.argv[0] = 'fgc'; sys.exit(main())" bench $SPEC --algorithms $ALGOS --batch-size 128 --steps $STEPS --warmup 3 --no-replicated --json /work/runs/ynn/$NAME-$m-$r.json > /work/runs/ynn/$NAME-$m-$r.txt 2>&1
    fi
  done
done
