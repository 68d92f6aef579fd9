# What one M/8/16 site's tangent noise (128 x 64 x 512 floats) costs on this machine: the
# random bits alone, the uniform and the Gaussian jax.random.normal draws (classic threefry,
# as fgc draws its tangents), jax.random.rademacher, and 32 signs from each random word (fgc's
# Rademacher noise); jitted, alternated, medians of 15 rounds.
import math, statistics, time
import jax, jax.numpy as jnp
from fgc.learning.estimators import sample_noise

shape = (1, 128, 64, 512)
jax.config.update("jax_threefry_partitionable", False)
fs = {
    "bits": lambda k: jax.random.bits(k, shape, jnp.uint32),
    "uniform": lambda k: jax.random.uniform(k, shape, jnp.float32, -1, 1),
    "normal": lambda k: jax.random.normal(k, shape, jnp.float32),
    "jax.random.rademacher": lambda k: jax.random.rademacher(k, shape, jnp.float32),
    "fgc rademacher (1 bit a sign)": lambda k: sample_noise("rademacher", k, shape, jnp.float32),
}
js = {n: jax.jit(f) for n, f in fs.items()}
key = jax.random.key(0)
for f in js.values():
    jax.block_until_ready(f(key))
t = {n: [] for n in js}
for i in range(15):
    for n, f in js.items():
        k = jax.random.fold_in(key, i)
        s = time.perf_counter(); jax.block_until_ready(f(k)); t[n].append(time.perf_counter() - s)
for n in js:
    print(f"{n}: median {1e3 * statistics.median(t[n]):.2f} ms")
