"""Where the FLOPs of an activity-perturbation step go, piece by piece, against backprop.

    python examples/profile_activity.py specs/mixer-m-8-16.fg --batch-size 128

Compiles (ahead of time, nothing is run unless ``--time``) the pieces of the LG-FG-A
estimate: the plain forward, the forward with gradients cut at the sites, the jvp with a
tangent at every site, the jvp and a plain forward in one program (does XLA merge the
jvp's primal with the forward?), the noise, and the whole estimate; next to BP's and
LG-BP's. Prints XLA's FLOP count (and with ``--time`` the median wall time) of each.
With ``--trace`` it also runs one step of BP and of the algorithm under ``jax.profiler`` and
sums the time of XLA's ops by kind (matmuls, layout copies, elementwise fusions, ...).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import fgc
from fgc.learning.estimators import UpdateRule, sample_noise
from fgc.lowering.lower import lower, trainable


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--algorithm", default="lg-fg-a")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--time", action="store_true", help="also run each piece and time it")
    ap.add_argument("--trace", action="store_true",
                    help="also profile one step of BP and of the algorithm: op time by kind")
    a = ap.parse_args()

    traced = {}
    prog = fgc.load(a.spec)
    shape, b = tuple(prog.graph.meta["input_shape"]), a.batch_size
    x = jax.random.normal(jax.random.key(0), (b, *shape))
    y = jax.random.randint(jax.random.key(1), (b,), 0, int(prog.graph.meta.get("classes") or 10))
    key = jax.random.key(2)

    def measure(label, f, *args):
        compiled = jax.jit(f).lower(*args).compile()
        flops = compiled.cost_analysis()["flops"] / 1e9
        line = f"{label:<44}{flops:>10.3f} GFLOP"
        if a.time:
            times = []
            for _ in range(5):
                t = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                times.append(time.perf_counter() - t)
            line += f"{np.median(times[1:]) * 1e3:>10.1f} ms"
        print(line, flush=True)

    for name in ("bp", "lg-bp", a.algorithm):
        plan = prog.plan(name)
        net = lower(plan, jax.random.key(0))
        rule = UpdateRule.build(plan, net)
        measure(f"{name}: whole estimate", lambda n, x, y, r=rule: r.estimate(n, x, y, key).grads,
                net, x, y)
        if a.trace and name != "lg-bp":
            traced[name] = op_times(jax.jit(lambda n, x, y, r=rule: r.estimate(n, x, y, key).grads),
                                    net, x, y)

    act = next(p for p in rule.passes if p.name == "forward-activity")
    params, static = eqx.partition(net, trainable(net))
    cut = {s.site for s in act.sites}

    def at_sites(step, apply, args):  # the activity rule's cut: no gradient into a site
        return apply(jax.lax.stop_gradient(args[0])) if step.id in cut else apply(*args)
    zeros = {s.site: jnp.zeros((b, *s.shape)) for s in act.sites}
    z = {s.site: jnp.ones((b, *s.shape)) for s in act.sites}

    def forward(p, x, y):
        return eqx.combine(p, static).forward(x, y).losses

    def cut_forward(p, x, y):
        return eqx.combine(p, static).forward(x, y, intercept=at_sites).losses

    def jvp(p, x, y, z):
        n = eqx.combine(p, static)
        return jax.jvp(lambda e: n.forward(x, y, noise=e).losses, (zeros,), (z,))

    def jvp_and_forward(p, x, y, z):
        return jvp(p, x, y, z), forward(p, x, y)

    def noise(k):
        keys = jax.random.split(k, len(act.sites))
        return [sample_noise(act.estimator.noise, kk, (1, b, *s.shape), jnp.float32)
                for kk, s in zip(keys, act.sites)]

    measure("  forward", forward, params, x, y)
    measure("  forward cut at the sites", cut_forward, params, x, y)
    measure("  jvp, a tangent at every site", jvp, params, x, y, z)
    measure("  jvp + forward in one program", jvp_and_forward, params, x, y, z)
    measure(f"  noise ({len(act.sites)} sites, {act.estimator.noise})", noise, key)
    if traced:
        kinds = sorted({k for t in traced.values() for k in t},
                       key=lambda k: -max(t.get(k, 0) for t in traced.values()))
        print(f"\nop time by kind, ms (one traced step){''.join(f'{n:>12}' for n in traced)}")
        for k in kinds[:12]:
            print(f"  {k:<40}" + "".join(f"{t.get(k, 0) / 1e3:>12.1f}" for t in traced.values()))
        print(f"  {'all ops':<40}" + "".join(f"{sum(t.values()) / 1e3:>12.1f}"
                                            for t in traced.values()))


def op_times(f, *args) -> dict[str, float]:
    """Microseconds per kind of XLA op in one traced call (kinds: the op name without
    its number; matmuls grouped)."""
    jax.block_until_ready(f(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            jax.block_until_ready(f(*args))
        (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    out = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if (e.get("ph") != "X" or name.startswith(("$", "Thunk", "Slinky", "Parse"))
                or "(" in name or "::" in name):  # host-side events, not XLA ops
            continue
        kind = re.sub(r"[._]\d+$", "", name)
        out["matmul" if kind.startswith(("ynn", "dot")) else kind] += e["dur"]
    return dict(out)


if __name__ == "__main__":
    main()
