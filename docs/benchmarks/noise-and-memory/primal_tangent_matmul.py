# Primal and tangent through one dense layer and its ReLU: two products x @ W, xdot @ W
# (what XLA gets from a jvp) against one product of the stacked rows [x; xdot] @ W, split
# after; M/8/16's dense shapes, jitted, alternated, medians of 20 rounds.
import statistics, time
import jax, jax.numpy as jnp

k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
x = jax.random.normal(k1, (8192, 512)); t = jax.random.normal(k2, (8192, 512))
w = jax.random.normal(k3, (512, 512))


@jax.jit
def two(x, t, w):
    y = x @ w
    return jnp.maximum(y, 0), (t @ w) * (y > 0)


@jax.jit
def one(x, t, w):
    y = jnp.concatenate([x, t]) @ w
    p, d = y[:8192], y[8192:]
    return jnp.maximum(p, 0), d * (p > 0)


for f in (two, one):
    jax.block_until_ready(f(x, t, w))
ts = {"two products": [], "one stacked product": []}
for i in range(20):
    for n, f in (("two products", two), ("one stacked product", one)):
        s = time.perf_counter(); jax.block_until_ready(f(x, t, w)); ts[n].append(time.perf_counter() - s)
for n in ts:
    print(f"{n}: median {1e3 * statistics.median(ts[n]):.1f} ms")
