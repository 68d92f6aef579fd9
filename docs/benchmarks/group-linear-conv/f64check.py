import jax, jax.numpy as jnp, numpy as np, equinox as eqx, sys
sys.path.insert(0, __import__("os").path.dirname(__file__))
from gl_variant_defs import conv, einsum, hybrid
from fgc.lowering import modules as M
from fgc.lowering.lower import lower
from fgc.tools.common import load_program
# argv: [SPEC [conv|hybrid]]: the einsum against the convolution (default) or as shipped now
new = {"conv": conv, "hybrid": hybrid}[sys.argv[2] if len(sys.argv) > 2 else "conv"]
with jax.enable_x64(True):
    prog = load_program(sys.argv[1] if len(sys.argv) > 1 else "specs/mixer-m-8-16.fg"); plan = prog.plan("bp")
    net = lower(plan, jax.random.key(0), dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3), jnp.float64)
    y = jnp.arange(8) % 10
    def loss(n):
        return sum(v.sum() for v in n.forward(x, y).losses.values())
    out = {}
    for name, call in (("einsum", einsum), ("conv", new)):
        M.GroupLinear.__call__ = call
        g = eqx.filter_grad(loss)(net)
        out[name] = (net(x), jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array)))
    a, b = out["einsum"], out["conv"]
    # the readout starts at zero, so its logits are zero in both: their largest difference
    print("logits max abs diff", float(jnp.abs(a[0] - b[0]).max()))
    print("grads max rel (per leaf, worst)", max(float(jnp.abs(u - v).max() / (jnp.abs(u).max() + 1e-300)) for u, v in zip(a[1], b[1])), len(a[1]))
