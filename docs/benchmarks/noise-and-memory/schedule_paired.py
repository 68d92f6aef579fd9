# Each algorithm's train step compiled twice in one process, with XLA:CPU's default
# scheduler and with its memory-optimised one (fgc.learning.blockwise.MEMORY_SCHEDULE,
# which fgc keeps for a block-wise step when it needs less memory), timed alternated:
# memory of each compiled step, paired time ratio (memory-optimised / default), whether the
# two give the same numbers, and which fgc keeps.
# Usage: python docs/benchmarks/noise-and-memory/schedule_paired.py SPEC bp,lg-fg-a ROUNDS
import statistics, sys, time
import equinox as eqx, jax, jax.numpy as jnp, numpy as np
from fgc.tools.bench.measure import _synthetic
from fgc.tools.bench.xla import _lower_compile, _memory
from fgc.learning.blockwise import MEMORY_SCHEDULE
from fgc.tools.common import load_program
from fgc.training.train import prepare, step_body

spec, names, rounds = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
prog = load_program(spec); data = _synthetic(prog, 128, 0)
x = np.asarray(data.x_train[:128]); y = np.asarray(data.y_train[:128])
for name in names:
    run = prepare(prog, algorithm=name, dataset=data, batch_size=128, seed=0)
    variants = {}
    for label, opts in (("default", None), ("memory", MEMORY_SCHEDULE)):
        step = eqx.filter_jit(step_body(run.rule, run.tx), donate="all", compiler_options=opts)
        net, opt = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True) if eqx.is_array(a) else a,
                                          run.init_state())  # each variant its own (donated) copy
        c, _, _ = _lower_compile(step, net, opt, jnp.asarray(x), jnp.asarray(y), run.key)
        variants[label] = (c, {"net": net, "opt": opt}, _memory(c))

    def one(label):
        c, state, _ = variants[label]
        xx, yy = jax.device_put(x), jax.device_put(y)
        t = time.perf_counter()
        state["net"], state["opt"], losses = c(state["net"], state["opt"], xx, yy, run.key)
        jax.block_until_ready((state["net"], state["opt"], losses))
        return time.perf_counter() - t, losses
    same = [jax.device_get(one(k)[1]) for k in variants]
    t = {k: [] for k in variants}
    for i in range(rounds):
        for k in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
            t[k].append(one(k)[0])
    q = sorted(b / a for a, b in zip(t["default"], t["memory"]))
    mem = {k: v[2]["footprint_bytes"] / 2**20 for k, v in variants.items()}
    keeps = ("memory-optimised" if len(run.rule.schedules()) > 1 and mem["memory"] < mem["default"]
             else "default")
    print(f"{name} ({run.rule.pieces} pieces; fgc keeps the {keeps} schedule): memory MiB default "
          f"{mem['default']:.1f}, memory-optimised {mem['memory']:.1f}; step ms "
          f"{statistics.median(t['default']) * 1e3:.1f} -> "
          f"{statistics.median(t['memory']) * 1e3:.1f}, paired {statistics.median(q):.3f} "
          f"(quartiles {np.percentile(q, 25):.3f}-{np.percentile(q, 75):.3f}); first-step losses "
          f"equal: {all(np.array_equal(same[0][k], same[1][k]) for k in same[0])}", flush=True)
