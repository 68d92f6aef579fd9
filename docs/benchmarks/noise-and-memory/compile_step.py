# Compiles one algorithm's train step for a spec at batch 128 (as fgc bench does) and prints
# XLA's memory analysis; run it with XLA_FLAGS=--xla_dump_to=DIR to get the dumps that
# live_at_peak.py reads.
import sys, os
import jax, jax.numpy as jnp
from fgc.tools.common import load_program
from fgc.tools.bench.measure import _synthetic
from fgc.training.train import make_step, prepare
from fgc.tools.bench.xla import _lower_compile, _xla
spec, algo = sys.argv[1], sys.argv[2]
prog = load_program(spec); data = _synthetic(prog, 128, 0)
run = prepare(prog, algorithm=algo, dataset=data, batch_size=128, seed=0)
step = make_step(run.rule, run.tx); net, opt = run.init_state()
x = jnp.asarray(data.x_train[:128]); y = jnp.asarray(data.y_train[:128])
c, _, _ = _lower_compile(step, net, opt, x, y, run.key)
m = _xla(c).memory_analysis()
print({k: getattr(m, k + "_size_in_bytes") / 2**20 for k in ("argument", "output", "alias", "temp")})
