"""What XLA says about a compiled function, and timing its calls: ahead-of-time compilation,
FLOPs, memory and the spread of call times."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

_DONATION_WARNING = "Some donated buffers were not usable"


def _lower_compile(fn, *args, schedules: tuple[dict, ...] = ({},)):
    """``(compiled, lower seconds, compile seconds)`` of a jitted function, ahead of time.

    Works for ``jax.jit`` and ``eqx.filter_jit`` alike (equinox ≥ 0.11 wraps the jax
    stages); the returned object is callable like ``fn``. With several ``schedules`` (XLA
    compiler options, :meth:`fgc.learning.estimators.UpdateRule.schedules`) it is compiled
    with each and the program needing the least memory kept, as ``fgc train`` does; the
    compile seconds are then those of all of them (:func:`_lower_compile_choosing` also
    says which options won).
    """
    return _lower_compile_choosing(fn, *args, schedules=schedules)[:3]


def _lower_compile_choosing(fn, *args, schedules: tuple[dict, ...] = ({},)):
    """:func:`_lower_compile` and, fourth, the compiler options of the program kept."""
    from fgc.training.compiling import compile_smallest
    with warnings.catch_warnings():
        # The step donates its whole input, so the batch and labels, which cannot alias an
        # output, are reported as unusable donations; that is expected, not a problem.
        warnings.filterwarnings("ignore", message=_DONATION_WARNING)
        t0 = time.perf_counter()
        lowered = fn.lower(*args)
        t1 = time.perf_counter()
        compiled, options = compile_smallest(lowered, schedules)
        t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1, options


def _xla(compiled):
    """The ``jax.stages.Compiled`` inside an equinox ``Compiled`` (or itself)."""
    return getattr(compiled, "compiled", compiled)


def _hlo_text(compiled) -> str | None:
    """The compiled module's optimised HLO, or None when the backend does not give it."""
    try:
        return _xla(compiled).as_text()
    except Exception:  # some backends and older jax releases cannot print it
        return None


def _flops(compiled) -> float | None:
    """FLOPs XLA counts for one call; None when the backend does not say.

    ``cost_analysis()`` is a dict in current jax, a one-element list of dicts in older
    releases, and may be None or raise on some backends.
    """
    try:
        cost = _xla(compiled).cost_analysis()
    except Exception:  # backends without cost analysis raise assorted errors
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not isinstance(cost, dict):
        return None
    flops = cost.get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def _memory(compiled) -> dict[str, int | None]:
    """XLA's memory analysis: argument, output, aliased and scratch bytes, and the
    footprint they add up to (donated arguments that alias outputs are counted once)."""
    try:
        m = _xla(compiled).memory_analysis()
    except Exception:
        m = None
    fields = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
              "alias_bytes": "alias_size_in_bytes", "temp_bytes": "temp_size_in_bytes"}
    out: dict[str, int | None] = {k: (int(getattr(m, f)) if m is not None and
                                      getattr(m, f, None) is not None else None)
                                  for k, f in fields.items()}
    from fgc.training.compiling import footprint  # the one definition fgc train also uses
    out["footprint_bytes"] = footprint(compiled)
    return out


def _device_peak(device) -> int | None:
    """The device's peak bytes in use so far (GPU/TPU); None where it keeps no count (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    peak = (stats or {}).get("peak_bytes_in_use")
    return int(peak) if peak is not None else None


def _spread(times: Sequence[float]) -> dict[str, Any]:
    import numpy as np
    t = np.asarray(times, dtype=float)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(t.min()), "max": float(t.max()), "n": int(t.size),
            "all": [float(v) for v in t]}



def _time_calls(compiled, args, warmup: int, steps: int, budget_s: float | None):
    import jax
    for _ in range(max(1, warmup)):
        jax.block_until_ready(compiled(*args))
    times, spent = [], 0.0
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
        spent += times[-1]
        if budget_s is not None and spent > budget_s and len(times) >= min(3, steps):
            break
    return _spread(times)
