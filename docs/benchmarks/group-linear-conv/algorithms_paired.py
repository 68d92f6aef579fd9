# Two or more algorithms' fgc train steps for one spec, compiled in one process and timed
# alternated (A, B, B, A, ...), so that the ratio of their step times is paired.
# Usage: python docs/benchmarks/group-linear-conv/algorithms_paired.py SPEC bp,lg-fg-a ROUNDS
# An entry may carry --set overrides after a '+': lg-fg-a+algorithm.lg-fg-a.estimator.noise=rademacher
import sys, time, statistics
import jax, jax.numpy as jnp, numpy as np
from fgc.front.overrides import load as load_with
from fgc.tools.common import load_program
from fgc.tools.bench.measure import _synthetic
from fgc.training.train import make_step, prepare
from fgc.tools.bench.xla import _lower_compile

spec, names, rounds = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
prog = load_program(spec); data = _synthetic(prog, 128, 0)
x = np.asarray(data.x_train[:128]); y = np.asarray(data.y_train[:128])
runs = {}
for name in names:
    algo, *sets = name.split("+")
    run = prepare(load_with(spec, sets) if sets else prog, algorithm=algo, dataset=data,
                  batch_size=128, seed=0)
    step = make_step(run.rule, run.tx)
    net, opt = run.init_state()
    c, _, _ = _lower_compile(step, net, opt, jnp.asarray(x), jnp.asarray(y), run.key,
                             schedules=run.rule.schedules())  # as fgc train and fgc bench compile it
    state = {"net": net, "opt": opt}

    def one(c=c, state=state, run=run):
        xx, yy = jax.device_put(x), jax.device_put(y)
        t = time.perf_counter()
        state["net"], state["opt"], losses = c(state["net"], state["opt"], xx, yy, run.key)
        jax.block_until_ready((state["net"], state["opt"], losses))
        return time.perf_counter() - t
    runs[name] = one
for r in runs.values():
    r(); r()
t = {k: [] for k in runs}
for i in range(rounds):
    for k, r in (list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]):
        t[k].append(r())
base = names[0]
for k in names:
    q = sorted(b / a for a, b in zip(t[base], t[k]))
    print(f"{k}: median {statistics.median(t[k]) * 1e3:.1f} ms (IQR {np.subtract(*np.percentile(t[k], [75, 25])) * 1e3:.1f}); "
          f"paired /{base}: median {statistics.median(q):.3f}, quartiles {np.percentile(q, 25):.3f}-{np.percentile(q, 75):.3f}")
