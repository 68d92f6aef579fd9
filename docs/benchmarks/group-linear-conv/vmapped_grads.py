# Why group_linear is not the grouped convolution yet: 512 vmapped draws of one
# group_linear's weight gradient (what verify, diagnose and per-sample projections do),
# einsum against convolution, jitted, timed on the second call.
# Usage: python docs/benchmarks/group-linear-conv/vmapped_grads.py
import os, sys, time
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(__file__))
from gl_variant_defs import conv, einsum, hybrid
from fgc.lowering import modules as M
from fgc.lowering.modules import make_layer

jax.config.update("jax_enable_x64", True)
shipped = M.GroupLinear.__call__
for dt in (jnp.float32, jnp.float64):
    layer = make_layer("group_linear", {"out": 64, "groups": 4, "bias": True}, [(64,)],
                       key=jax.random.key(0), dtype=dt)
    x = jnp.ones((64, 64), dt)
    for name, call in (("einsum", einsum), ("conv", conv), ("hybrid", hybrid)):
        M.GroupLinear.__call__ = call

        def one(k):
            xx = x + jax.random.normal(k, x.shape, dt)
            return jax.grad(lambda l: (l(xx) ** 2).sum())(layer).weight
        f = jax.jit(jax.vmap(one))
        keys = jax.random.split(jax.random.key(1), 512)
        jax.block_until_ready(f(keys))
        t = time.perf_counter()
        jax.block_until_ready(f(keys))
        print(f"{dt.__name__} {name}: {time.perf_counter() - t:.4f} s", flush=True)
M.GroupLinear.__call__ = shipped
