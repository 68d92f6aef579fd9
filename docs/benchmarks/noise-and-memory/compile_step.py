# Compiles one algorithm's train step for a spec at batch 128 (as fgc bench does, the
# schedule fgc keeps included) and prints XLA's memory analysis; run it with
# XLA_FLAGS=--xla_dump_to=DIR to get the dumps that live_at_peak.py reads.
# Usage: python docs/benchmarks/noise-and-memory/compile_step.py specs/mixer-m-8-16.fg lg-fg-a [SCHEDULE]
# SCHEDULE: fgc (the one fgc keeps: both compiled, so a dump holds both), default or memory.
import sys
import jax.numpy as jnp
from fgc.tools.bench.measure import _synthetic
from fgc.tools.bench.xla import _lower_compile, _xla
from fgc.learning.blockwise import MEMORY_SCHEDULE
from fgc.tools.common import load_program
from fgc.training.train import make_step, prepare


def compiled_step(spec, algo, batch=128, schedule="fgc"):
    """The compiled train step of ``algo`` for ``spec`` on a synthetic batch."""
    prog = load_program(spec); data = _synthetic(prog, batch, 0)
    run = prepare(prog, algorithm=algo, dataset=data, batch_size=batch, seed=0)
    net, opt = run.init_state()
    x = jnp.asarray(data.x_train[:batch]); y = jnp.asarray(data.y_train[:batch])
    return _lower_compile(make_step(run.rule, run.tx), net, opt, x, y, run.key,
                          schedules={"fgc": run.rule.schedules(), "default": ({},),
                                     "memory": (MEMORY_SCHEDULE,)}[schedule])[0]


if __name__ == "__main__":
    m = _xla(compiled_step(*sys.argv[1:3], schedule=(sys.argv[3:] or ["fgc"])[0])).memory_analysis()
    print({k: getattr(m, k + "_size_in_bytes") / 2**20 for k in ("argument", "output", "alias", "temp")})
