# fgc's train step with GroupLinear as the batched einsum (before fc8c9e7) and as the grouped
# convolution (after), compiled in one process and timed alternated (paired ratios).
# Usage: python docs/benchmarks/group-linear-conv/variant.py specs/mixer-m-8-16.fg bp 8
import sys, time, statistics, re, collections
import jax, jax.numpy as jnp, numpy as np
from fgc.lowering import modules as M
from fgc.tools.common import load_program
from fgc.tools.bench.measure import _synthetic
from fgc.training.train import make_step, prepare
from fgc.tools.bench.xla import _lower_compile, _xla

sys.path.insert(0, __import__("os").path.dirname(__file__))
from gl_variant_defs import conv, einsum, hybrid  # as shipped before, as a convolution, as now

VARIANTS = {"einsum": einsum, "conv": conv, "hybrid": hybrid}
spec, algo, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(VARIANTS)
prog = load_program(spec); data = _synthetic(prog, 128, 0)
x = np.asarray(data.x_train[:128]); y = np.asarray(data.y_train[:128])
runs, outs = {}, {}
for name in names:
    M.GroupLinear.__call__ = VARIANTS[name]
    run = prepare(prog, algorithm=algo, dataset=data, batch_size=128, seed=0)
    step = make_step(run.rule, run.tx)
    net, opt = run.init_state()
    c, _, _ = _lower_compile(step, net, opt, jnp.asarray(x), jnp.asarray(y), run.key)
    txt = _xla(c).as_text()
    ca = _xla(c).cost_analysis(); ca = ca[0] if isinstance(ca, list) else ca
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", txt))
    print(name, {k: ops[k] for k in ("copy", "transpose", "dot", "convolution", "fusion")},
          "GFLOP %.2f" % (ca["flops"] / 1e9), "GB %.2f" % (ca["bytes accessed"] / 1e9), flush=True)
    state = {"net": net, "opt": opt}
    def one(c=c, state=state, run=run):
        xx, yy = jax.device_put(x), jax.device_put(y)
        t = time.perf_counter()
        state["net"], state["opt"], losses = c(state["net"], state["opt"], xx, yy, run.key)
        jax.block_until_ready(losses)
        return time.perf_counter() - t, losses
    runs[name] = one
    # same starting point for the numbers check
    outs[name] = None
for k, r in runs.items():
    _, l = r(); outs[k] = {a: float(b) for a, b in jax.device_get(l).items()}
print("losses after one step", outs)
for r in runs.values():
    r()
t = {k: [] for k in runs}
for i in range(rounds):
    order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]
    for k, r in order:
        t[k].append(r()[0])
base = names[0]
for k in names:
    ratios = sorted(b / a for a, b in zip(t[base], t[k]))
    print(k, "median s %.3f" % statistics.median(t[k]), "paired /%s %.3f range %.3f-%.3f" % (base, statistics.median(ratios), ratios[0], ratios[-1]))
