"""The device's own ceilings, measured where the step runs: what its matrix products and
its memory can do at best, so a profile can say how far each kind of operation is from
them (:mod:`fgc.tools.bench.anatomy`).

- ``matmul_<precision>``: GFLOP/s of one large square product, the best of a few calls,
  for fp32 (``highest``: full float32), the backend's default float32 (TF32 on NVIDIA
  GPUs; on CPUs the same as fp32) and bf16 inputs with float32 accumulation;
- ``stream``: GB/s of ``2 x + 1`` over a large array (read once, written once).
"""

from __future__ import annotations

import time
from typing import Any

_TRIES = 5


def _best(fn, *args) -> float:
    import jax
    jax.block_until_ready(fn(*args))  # compile and warm
    best = float("inf")
    for _ in range(_TRIES):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def measure_ceilings(device=None, matmul_n: int | None = None,
                     stream_size: int | None = None) -> dict[str, Any]:
    """``{"matmul_fp32", "matmul_default", "matmul_bf16"}`` in GFLOP/s, ``stream`` in GB/s,
    and the sizes used (``matmul_n``, ``stream_bytes``). The default sizes are large
    enough to reach the ceilings (2048² and 256 MiB on a CPU, 8192² and 1 GiB elsewhere)."""
    import jax
    import jax.numpy as jnp

    device = device or jax.devices()[0]
    cpu = device.platform == "cpu"
    n = matmul_n or (2048 if cpu else 8192)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(k1, (n, n), jnp.float32), device)
    b = jax.device_put(jax.random.normal(k2, (n, n), jnp.float32), device)
    out: dict[str, Any] = {"matmul_n": n}
    for name, precision, dtype in (("fp32", jax.lax.Precision.HIGHEST, jnp.float32),
                                   ("default", jax.lax.Precision.DEFAULT, jnp.float32),
                                   ("bf16", jax.lax.Precision.DEFAULT, jnp.bfloat16)):
        fn = jax.jit(lambda x, y, p=precision: jnp.matmul(
            x, y, precision=p, preferred_element_type=jnp.float32))
        x, y = a.astype(dtype), b.astype(dtype)
        out[f"matmul_{name}"] = 2.0 * n ** 3 / _best(fn, x, y) / 1e9
    size = stream_size or ((2 ** 26) if cpu else (2 ** 28))  # 256 MiB / 1 GiB of float32
    x = jax.device_put(jnp.ones((size,), jnp.float32), device)
    out["stream_bytes"] = 2 * 4 * size
    out["stream"] = out["stream_bytes"] / _best(jax.jit(lambda v: 2 * v + 1), x) / 1e9
    return out
