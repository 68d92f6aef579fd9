# Compile only: each algorithm's train step with XLA:CPU's default scheduler and with its
# memory-optimised one (fgc.learning.blockwise.MEMORY_SCHEDULE), XLA's memory analysis of
# both and which one fgc keeps, for specs whose steps take minutes on a CPU.
# Usage: python docs/benchmarks/noise-and-memory/schedule_memory.py SPEC bp,lg-bp [BATCH]
import sys
import equinox as eqx, jax.numpy as jnp, numpy as np
from fgc.tools.bench.measure import _synthetic
from fgc.tools.bench.xla import _lower_compile, _memory
from fgc.learning.blockwise import MEMORY_SCHEDULE
from fgc.tools.common import load_program
from fgc.training.train import prepare, step_body

spec, names = sys.argv[1], sys.argv[2].split(",")
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 128
prog = load_program(spec); data = _synthetic(prog, batch, 0)
x = jnp.asarray(data.x_train[:batch]); y = jnp.asarray(data.y_train[:batch])
for name in names:
    run = prepare(prog, algorithm=name, dataset=data, batch_size=batch, seed=0)
    out, sizes = [], []
    for opts in (None, MEMORY_SCHEDULE):
        net, opt = run.init_state()
        step = eqx.filter_jit(step_body(run.rule, run.tx), donate="all", compiler_options=opts)
        c, _, secs = _lower_compile(step, net, opt, x, y, run.key)
        sizes.append(_memory(c)["footprint_bytes"] / 2**20)
        out.append(f"{sizes[-1]:.1f} MiB ({secs:.0f} s to compile)")
    keeps = "memory-optimised" if len(run.rule.schedules()) > 1 and sizes[1] < sizes[0] else "default"
    print(f"{name} ({run.rule.pieces} pieces; fgc keeps the {keeps} schedule): default {out[0]}, "
          f"memory-optimised {out[1]}", flush=True)
