"""The fused replicated local loss against the naive masked one: JVP and VJP time and
compiled memory at a network's own sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fgc.tools.bench.base import _NAIVE_BUDGET_S, NAIVE_LIMIT_BYTES, BenchError
from fgc.tools.bench.xla import _flops, _lower_compile, _memory, _time_calls
from fgc.tools.common import gib_or_mib


def replicated_configs(net, batch_size: int) -> list[dict[str, Any]]:
    """The sizes at which a lowered network evaluates its replicated losses.

    Mirrors :meth:`fgc.lowering.lower.Network._fused_loss`: the value before the head's
    ``mean`` is ``[B, P, C]`` (``P = 1`` for a vector, or when the loss is not replicated
    over patches), the head's ``linear`` is ``[C, K]``. Losses of equal sizes (one per
    block, usually) share an entry.

    Returns:
      One dict per distinct ``(P, C, G, K)``: ``batch``, ``patches``, ``channels``,
      ``groups``, ``classes``, ``replicate`` and the ``losses`` (ids) of that size.
    """
    steps = {s.id: s for s in net.steps}
    out: dict[tuple, dict[str, Any]] = {}
    for loss in net.loss_heads:
        if not loss.fused or len(loss.head) < 2:
            continue
        src = steps[loss.head[-2]].inputs[0]
        shape = tuple(steps[src].shape) if src in steps else tuple(net.input_shape)
        c = int(shape[-1])
        p = 1 if len(shape) == 1 else math.prod(shape[:-1])
        if "patches" not in loss.replicate:
            p = 1
        k = int(net.layers[loss.head[-1]].weight.shape[1])
        key = (p, c, loss.groups, k)
        entry = out.setdefault(key, {"batch": batch_size, "patches": p, "channels": c,
                                     "groups": loss.groups, "classes": k,
                                     "replicate": list(loss.replicate), "losses": []})
        entry["losses"].append(loss.id)
    return list(out.values())


def compare_replicated(batch: int, patches: int, channels: int, groups: int,
                       classes: int = 10, *, steps: int = 20, warmup: int = 3, seed: int = 0,
                       naive_limit_bytes: int = NAIVE_LIMIT_BYTES,
                       losses: Sequence[str] = ()) -> dict[str, Any]:
    """Fused vs naive replicated loss at one size: JVP and VJP time and compiled memory.

    The JVP carries a tangent on the block output ``h`` (what activity perturbation
    does); the VJP is the gradient of the mean loss with respect to ``h`` and the head.
    Both versions are jit-compiled on abstract shapes first; the naive one runs only when
    XLA's memory analysis puts it under ``naive_limit_bytes`` (and is not even compiled
    when its ``[P·G, P, C]`` masks alone exceed it). It gets at most about 30 s of timed
    calls (and at least three), as it can take seconds per call.

    Args:
      batch, patches, channels, groups, classes: ``B, P, C, G, K``; ``G`` divides ``C``.
      steps, warmup: timed and untimed calls of each compiled function.
      seed: seed of the random inputs.
      naive_limit_bytes: the naive version's memory limit.
      losses: loss ids measured at this size (recorded only).

    Returns:
      A JSON-ready dict: the sizes, ``fused_jvp``, ``fused_vjp``, ``naive_jvp``,
      ``naive_vjp`` (each with ``compile_seconds``, ``memory``, ``footprint_bytes``,
      ``flops`` and ``seconds``, or ``skipped`` saying why) and ``naive_over_fused_jvp`` /
      ``_vjp`` (``time`` and ``footprint`` ratios).
    """
    for what, v in (("batch", batch), ("patches", patches), ("channels", channels),
                    ("groups", groups), ("classes", classes), ("steps", steps)):
        if not isinstance(v, int) or v < 1:
            raise BenchError(f"{what} must be an integer ≥ 1, got {v!r}")
    if channels % groups:
        raise BenchError(f"groups ({groups}) must divide channels ({channels})")
    cfg = {"batch": batch, "patches": patches, "channels": channels, "groups": groups,
           "classes": classes, "losses": list(losses)}
    return _replicated_compare(cfg, warmup, steps, seed, naive_limit_bytes)


def _replicated_compare(cfg: dict[str, Any], warmup: int, steps: int, seed: int,
                        limit_bytes: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from fgc.lowering.replicated import naive_replicated_xent, replicated_xent

    b, p, c, g, k = (cfg[n] for n in ("batch", "patches", "channels", "groups", "classes"))
    dtype = jnp.float32
    itemsize = jnp.dtype(dtype).itemsize
    keys = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(keys[0], (b, p, c), dtype)
    dh = jax.random.normal(keys[1], (b, p, c), dtype)
    w = 0.1 * jax.random.normal(keys[2], (c, k), dtype)
    bias = jnp.zeros((k,), dtype)
    y = jax.random.randint(keys[3], (b,), 0, k)

    def jvp_fn(loss):
        return jax.jit(lambda h, w, bias, y, dh:
                       jax.jvp(lambda h_: loss(h_, w, bias, y, g), (h,), (dh,))[1])

    def vjp_fn(loss):
        return jax.jit(jax.grad(lambda h, w, bias, y: jnp.mean(loss(h, w, bias, y, g)),
                                argnums=(0, 1, 2)))

    modes = {"jvp": (jvp_fn, (h, w, bias, y, dh)), "vjp": (vjp_fn, (h, w, bias, y))}
    # The naive version builds its P·G one-hot masks as a [P·G, P, C] constant; past the
    # limit even compiling it is not worth trying.
    masks_bytes = p * g * p * c * itemsize
    copies_bytes = b * p * g * p * c * itemsize
    result: dict[str, Any] = {**cfg, "replicas_per_example": p * g,
                              "naive_estimate": {"masks_bytes": masks_bytes,
                                                 "masked_copies_bytes": copies_bytes},
                              "limit_bytes": limit_bytes}
    for version, loss in (("fused", replicated_xent), ("naive", naive_replicated_xent)):
        for mode, (make, args) in modes.items():
            entry: dict[str, Any] = {}
            result[f"{version}_{mode}"] = entry
            if version == "naive" and masks_bytes > limit_bytes:
                entry["skipped"] = (f"its {p * g:,} one-hot masks alone take "
                                    f"{gib_or_mib(masks_bytes)} "
                                    f"(limit {gib_or_mib(limit_bytes)}); not compiled")
                continue
            abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
            compiled, lower_s, compile_s = _lower_compile(make(loss), *abstract)
            memory = _memory(compiled)
            entry.update(compile_seconds=lower_s + compile_s, memory=memory,
                         footprint_bytes=memory["footprint_bytes"], flops=_flops(compiled))
            need = memory["footprint_bytes"]
            if version == "naive" and need is not None and need > limit_bytes:
                entry["skipped"] = (f"XLA needs {gib_or_mib(need)} for it (limit "
                                    f"{gib_or_mib(limit_bytes)}; one masked copy of the "
                                    f"block output per replica is "
                                    f"{gib_or_mib(copies_bytes)}); not run")
                continue
            entry["seconds"] = _time_calls(compiled, args, warmup, steps,
                                           _NAIVE_BUDGET_S if version == "naive" else None)
            del compiled
    for mode in modes:
        f, n = result[f"fused_{mode}"], result[f"naive_{mode}"]
        ratio: dict[str, float | None] = {}
        if "seconds" in f and "seconds" in n:
            ratio["time"] = n["seconds"]["median"] / f["seconds"]["median"]
        if f.get("footprint_bytes") and n.get("footprint_bytes") is not None:
            ratio["footprint"] = n["footprint_bytes"] / f["footprint_bytes"]
        result[f"naive_over_fused_{mode}"] = ratio
    return result
