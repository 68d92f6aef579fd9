"""`fgc bench`: compile time, step time, memory and FLOPs of a spec under each algorithm.

:func:`bench_spec` builds the train step of one spec under several algorithms in one
process, side by side, on synthetic data of the spec's input shape (no dataset needed),
and measures for each:

* compile seconds: tracing plus XLA compilation, done ahead of time
  (``eqx.filter_jit(...).lower(...).compile()``), so no step is timed with compilation in it;
* step time: median, quartiles, min and max of ``steps`` steps after ``warmup`` warm-up
  steps, each one ``jax.block_until_ready``; images/s = batch / median;
* FLOPs per step from XLA's cost analysis, and achieved FLOP/s = FLOPs / median;
* memory: the compiled step's footprint (arguments + outputs − donated-and-aliased + XLA
  scratch) from XLA's memory analysis; on GPU also the device's ``peak_bytes_in_use``
  (a high-water mark of the whole process, so it only grows from one algorithm to the next);
* every figure's ratio to BP's when ``bp`` is among the algorithms.

It then compares the fused replicated local loss (:func:`fgc.lowering.replicated.replicated_xent`)
with the naive masked one (:func:`fgc.lowering.replicated.naive_replicated_xent`) at the spec's own
batch, patch, group, channel and class counts: JVP and VJP time and compiled memory. The
naive version is compiled on abstract shapes first and only run when XLA says it fits under
a memory limit (4 GiB by default): at LocalMixer M/8/16 sizes its VJP holds one copy of the
block output per replica, 16 GiB at batch 128.

Example:
    >>> from fgc.tools.bench import bench_spec, format_report
    >>> result = bench_spec("specs/mixer-s-1-1.fg", ["bp", "lg-fg-a"], steps=10)  # doctest: +SKIP
    >>> print(format_report(result))                                              # doctest: +SKIP

Timings are wall-clock on a shared machine: run nothing else alongside for numbers to
publish, and read the quartiles before trusting a small ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fgc.errors import FgError

__all__ = ["BenchError", "NAIVE_LIMIT_BYTES", "add_arguments", "bench_spec",
           "compare_replicated", "format_replicated", "format_report", "replicated_configs",
           "run", "supported_algorithms", "write_json"]

NAIVE_LIMIT_BYTES = 4 * 2**30
# The naive replicated loss can take seconds per call at real sizes; it gets at most this
# long for its timed calls (at least three of them), so a benchmark stays a few minutes.
_NAIVE_BUDGET_S = 30.0
_FIGURES = ("compile_seconds", "step_seconds", "images_per_second", "flops",
            "flops_per_second", "footprint_bytes", "device_peak_bytes")
_DONATION_WARNING = "Some donated buffers were not usable"


class BenchError(FgError):
    """A benchmark cannot run as asked (unknown algorithm, bad sizes, unwritable output)."""


# --- measuring -------------------------------------------------------------------------------

def _lower_compile(fn, *args):
    """``(compiled, lower seconds, compile seconds)`` of a jitted function, ahead of time.

    Works for ``jax.jit`` and ``eqx.filter_jit`` alike (equinox ≥ 0.11 wraps the jax
    stages); the returned object is callable like ``fn``.
    """
    with warnings.catch_warnings():
        # The step donates its whole input, so the batch and labels, which cannot alias an
        # output, are reported as unusable donations; that is expected, not a problem.
        warnings.filterwarnings("ignore", message=_DONATION_WARNING)
        t0 = time.perf_counter()
        lowered = fn.lower(*args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def _xla(compiled):
    """The ``jax.stages.Compiled`` inside an equinox ``Compiled`` (or itself)."""
    return getattr(compiled, "compiled", compiled)


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
    parts = [out["argument_bytes"], out["output_bytes"], out["temp_bytes"]]
    out["footprint_bytes"] = (None if None in parts else
                              sum(parts) - (out["alias_bytes"] or 0))
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


# --- the train step of each algorithm --------------------------------------------------------

def _load(spec):
    from fgc.plan.program import Program, load
    return spec if isinstance(spec, Program) else load(spec)


def supported_algorithms(spec) -> tuple[list[str], dict[str, str]]:
    """The preset algorithms a spec can run, and for each other preset why not.

    Args:
      spec: a ``.fg`` path or a loaded :class:`~fgc.plan.program.Program`.

    Returns:
      ``(names, skipped)``: presets whose ``Program.plan`` succeeds, in preset order, and
      preset → the first line of the diagnostic that stopped it.
    """
    from fgc.front.config import presets
    prog = _load(spec)
    chosen, skipped = [], {}
    for name in presets():
        try:
            prog.plan(name)
        except FgError as e:
            skipped[name] = _first_line(e)
        else:
            chosen.append(name)
    return chosen, skipped


def _select(prog, algorithms: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The algorithms to run and, for presets left out by default, why."""
    from fgc.graph.build import suggest
    known = sorted(prog.algorithms)
    if algorithms is None:
        chosen, skipped = supported_algorithms(prog)
        if not chosen:
            raise BenchError(f"{prog.path}: no preset algorithm can run on this spec "
                             f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
        return chosen, skipped
    names = list(dict.fromkeys(a.strip() for a in algorithms if a.strip()))
    if not names:
        raise BenchError(f"no algorithms given; known: {', '.join(known)}")
    unknown = [n for n in names if n not in prog.algorithms]
    if unknown:
        hints = [h for h in (suggest(n, known) for n in unknown) if h]
        raise BenchError(
            f"unknown algorithm{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'`{n}`' for n in unknown)} for {prog.path}"
            + (f" ({'; '.join(hints)})" if hints else "") + f"; known: {', '.join(known)}")
    for name in names:
        try:
            prog.plan(name)
        except FgError as e:
            raise BenchError(f"algorithm `{name}` cannot run on {prog.path}:\n{e}\n"
                             f"drop it from --algorithms, or leave --algorithms out to "
                             f"run every preset this spec supports") from None
    return names, {}


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _synthetic(prog, batch_size: int, seed: int):
    from fgc.training.data import synthetic_dataset
    meta = prog.graph.meta
    return synthetic_dataset(image_shape=tuple(meta["input_shape"]),
                             num_classes=int(meta.get("classes") or 10),
                             n_train=2 * batch_size, n_test=batch_size, seed=seed)


def _bench_algorithm(prog, name: str, data, batch_size: int, steps: int, warmup: int,
                     seed: int, device) -> tuple[dict[str, Any], Any]:
    """Measures one algorithm's train step; returns the row and the sizes of the
    network's replicated losses (read before the step donates the network's buffers)."""
    import jax
    import numpy as np

    from fgc.training.train import make_step, prepare

    t0 = time.perf_counter()
    run = prepare(prog, algorithm=name, dataset=data, batch_size=batch_size, seed=seed)
    step = make_step(run.rule, run.tx)
    net, opt_state = run.init_state()
    build_seconds = time.perf_counter() - t0
    replicated = replicated_configs(run.net, batch_size)
    x_host = np.asarray(data.x_train[:batch_size])
    y_host = np.asarray(data.y_train[:batch_size])

    def batch(i):
        # Fresh device buffers every step: the step donates all of its inputs.
        x, y = jax.device_put(x_host, device), jax.device_put(y_host, device)
        key = jax.random.fold_in(run.key, i + 1)
        jax.block_until_ready((x, y, key))
        return x, y, key

    compiled, lower_s, compile_s = _lower_compile(step, net, opt_state, *batch(-1))
    times = []
    for i in range(warmup + steps):
        x, y, key = batch(i)
        t = time.perf_counter()
        net, opt_state, losses = compiled(net, opt_state, x, y, key)
        jax.block_until_ready((net, opt_state, losses))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    finite = all(math.isfinite(float(v)) for v in jax.device_get(losses).values())
    spread = _spread(times)
    flops = _flops(compiled)
    memory = _memory(compiled)
    row = {
        "algorithm": name,
        "estimator": run.rule.describe(),
        "build_seconds": build_seconds,
        "lower_seconds": lower_s,
        "xla_compile_seconds": compile_s,
        "compile_seconds": lower_s + compile_s,
        "step_seconds": spread,
        "images_per_second": batch_size / spread["median"],
        "flops": flops,
        "flops_per_second": flops / spread["median"] if flops is not None else None,
        "memory": memory,
        "footprint_bytes": memory["footprint_bytes"],
        "device_peak_bytes": _device_peak(device),
        "losses_finite": finite,
    }
    del net, opt_state, losses, compiled, step, run
    gc.collect()
    return row, replicated


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Adds ``ratios_to_bp`` (value / BP's value, per figure) to each row, when BP ran."""
    bp = next((r for r in rows if r["algorithm"] == "bp"), None)
    if bp is None:
        return

    def value(r, k):
        v = r.get(k)
        return v["median"] if isinstance(v, dict) else v

    for r in rows:
        r["ratios_to_bp"] = {
            k: (value(r, k) / value(bp, k) if value(r, k) is not None and value(bp, k)
                else None) for k in _FIGURES}


# --- the replicated loss, fused vs naive ----------------------------------------------------

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


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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
                                    f"{_gib(masks_bytes)} (limit {_gib(limit_bytes)}); "
                                    f"not compiled")
                continue
            abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
            compiled, lower_s, compile_s = _lower_compile(make(loss), *abstract)
            memory = _memory(compiled)
            entry.update(compile_seconds=lower_s + compile_s, memory=memory,
                         footprint_bytes=memory["footprint_bytes"], flops=_flops(compiled))
            need = memory["footprint_bytes"]
            if version == "naive" and need is not None and need > limit_bytes:
                entry["skipped"] = (f"XLA needs {_gib(need)} for it (limit "
                                    f"{_gib(limit_bytes)}; one masked copy of the block "
                                    f"output per replica is {_gib(copies_bytes)}); not run")
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


# --- the benchmark ---------------------------------------------------------------------------

def bench_spec(spec_path, algorithms: Sequence[str] | None = None, batch_size: int = 128,
               steps: int = 20, warmup: int = 3, seed: int = 0, *, replicated: bool = True,
               naive_limit_bytes: int = NAIVE_LIMIT_BYTES,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measures a spec's train step under several algorithms, side by side in one process.

    Args:
      spec_path: a ``.fg`` path or a loaded :class:`~fgc.plan.program.Program`.
      algorithms: algorithm names (presets or the spec's own); default: every preset
        the spec can run (those ``Program.plan`` accepts), the others listed under
        ``skipped``.
      batch_size: examples per step (synthetic data of the spec's input shape).
      steps: timed steps per algorithm.
      warmup: untimed steps before them (compilation is never among them: it is done
        ahead of time and timed on its own).
      seed: seed of the network, the data and the noise.
      replicated: also compare the fused replicated local loss with the naive one.
      naive_limit_bytes: the naive replicated loss is only compiled and run when it fits.
      log: called with a line before each slow stage (progress), e.g. ``print``.

    Returns:
      A JSON-ready dict: ``spec``, ``spec_name``, ``device`` (kind, platform, count),
      ``jax``/``equinox`` versions, the settings, ``algorithms`` (one row per algorithm:
      ``compile_seconds``, ``step_seconds`` {median, q1, q3, iqr, min, max, n, all},
      ``images_per_second``, ``flops``, ``flops_per_second``, ``memory`` (XLA's bytes),
      ``footprint_bytes``, ``device_peak_bytes``, and ``ratios_to_bp`` when ``bp`` ran),
      ``skipped`` (preset → why) and ``replicated`` (``{"configs": [...]}`` or
      ``{"skipped": why}``).

    Raises:
      BenchError: an unknown algorithm (the message names the known ones), one the spec
        cannot run, or sizes below 1.
      SpecError, FgError: the spec does not load.
    """
    for what, v, low in (("batch size", batch_size, 1), ("steps", steps, 1),
                         ("warm-up steps", warmup, 0)):
        if not isinstance(v, int) or v < low:
            raise BenchError(f"{what} must be an integer ≥ {low}, got {v!r}")
    log = log or (lambda _: None)
    prog = _load(spec_path)
    names, skipped = _select(prog, algorithms)

    import equinox as eqx
    import jax

    device = jax.devices()[0]
    data = _synthetic(prog, batch_size, seed)
    rows, configs = [], []
    for i, name in enumerate(names):
        log(f"[{i + 1}/{len(names)}] {name}: compiling and timing {steps} steps")
        row, configs = _bench_algorithm(prog, name, data, batch_size, steps, warmup, seed,
                                        device)
        rows.append(row)
    _ratios(rows)

    rep: dict[str, Any]
    if not replicated:
        rep = {"skipped": "not asked for (--no-replicated)"}
    elif not configs:
        rep = {"skipped": "the spec has no replicated local loss (`replicate = ...`)"}
    else:
        rep = {"configs": []}
        for cfg in configs:
            log(f"replicated loss at B={cfg['batch']} P={cfg['patches']} C={cfg['channels']} "
                f"G={cfg['groups']}: fused vs naive")
            rep["configs"].append(_replicated_compare(cfg, warmup, steps, seed,
                                                      naive_limit_bytes))
    return {
        "spec": str(prog.path),
        "spec_name": prog.graph.meta.get("title"),
        "device": {"kind": device.device_kind, "platform": device.platform,
                   "count": jax.device_count(), "host_cpus": os.cpu_count(),
                   "host": platform.machine()},
        "jax": jax.__version__,
        "equinox": eqx.__version__,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "seed": seed,
        "data": "synthetic",
        "algorithms": rows,
        "skipped": skipped,
        "replicated": rep,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- output ----------------------------------------------------------------------------------

def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_report(result: dict[str, Any]) -> str:
    """The measurements of :func:`bench_spec` as an aligned plain-text report."""
    d = result["device"]
    title = result.get("spec_name")
    lines = [f"fgc bench: {title + ' · ' if title else ''}{result['spec']} · batch "
             f"{result['batch_size']} · median of {result['steps']} steps after "
             f"{result['warmup']} warm-up · {d['kind']} ({d['platform']}"
             f"{', ' + str(d['host_cpus']) + ' host CPUs' if d['platform'] == 'cpu' else ''})"
             f" · jax {result['jax']}"]
    rows = result["algorithms"]
    have_bp = any("ratios_to_bp" in r for r in rows)
    peak = any(r.get("device_peak_bytes") for r in rows)
    header = ["algorithm", "compile s", "step ms", "IQR ms", "images/s", "mem MiB",
              "GFLOP/step", "GFLOP/s"]
    if peak:
        header.insert(6, "peak MiB")
    if have_bp:
        header += ["time ×BP", "mem ×BP", "FLOP ×BP"]
    body = []
    for r in rows:
        s = r["step_seconds"]
        cells = [r["algorithm"], _fmt(r["compile_seconds"], ".1f"), _fmt(s["median"] * 1e3, ".2f"),
                 _fmt(s["iqr"] * 1e3, ".2f"), _fmt(r["images_per_second"], ",.0f"),
                 _fmt(r["footprint_bytes"] and r["footprint_bytes"] / 2**20, ".1f"),
                 _fmt(r["flops"] and r["flops"] / 1e9, ".3f"),
                 _fmt(r["flops_per_second"] and r["flops_per_second"] / 1e9, ".1f")]
        if peak:
            cells.insert(6, _fmt(r.get("device_peak_bytes") and r["device_peak_bytes"] / 2**20,
                                 ".0f"))
        if have_bp:
            q = r["ratios_to_bp"]
            cells += [_fmt(q["step_seconds"], ".2f"), _fmt(q["footprint_bytes"], ".2f"),
                      _fmt(q["flops"], ".2f")]
        body.append(cells)
    lines += _table(header, body)
    notes = ["mem = the compiled step's arguments + outputs + XLA scratch (donated buffers "
             "counted once); GFLOP from XLA's cost analysis"]
    if peak:
        notes.append("peak = the device's high-water mark so far in this process "
                     "(it only grows from one row to the next)")
    if not have_bp:
        notes.append("no ×BP columns: bp was not among the algorithms")
    bad = [r["algorithm"] for r in rows if not r.get("losses_finite", True)]
    if bad:
        notes.append(f"non-finite losses after the timed steps: {', '.join(bad)}")
    for name, why in result.get("skipped", {}).items():
        notes.append(f"{name} not run: {why}")
    lines += [f"  {n}" for n in notes]

    rep = result.get("replicated") or {}
    if "skipped" in rep:
        lines += ["", f"replicated loss, fused vs naive: skipped: {rep['skipped']}"]
    for cfg in rep.get("configs", []):
        lines += ["", format_replicated(cfg)]
    return "\n".join(lines)


def format_replicated(cfg: dict[str, Any]) -> str:
    """One fused-vs-naive comparison of :func:`compare_replicated` as an aligned table."""
    lines = [_replicated_title(cfg)]
    header = ["", "JVP ms", "JVP MiB", "VJP ms", "VJP MiB"]
    body = []
    for version in ("fused", "naive"):
        cells = [version]
        for mode in ("jvp", "vjp"):
            e = cfg[f"{version}_{mode}"]
            t = e.get("seconds")
            cells += [_fmt(t and t["median"] * 1e3, ".2f", "not run"),
                      _fmt(e.get("footprint_bytes") and e["footprint_bytes"] / 2**20, ".1f")]
        body.append(cells)
    cells = ["naive/fused"]
    for mode in ("jvp", "vjp"):
        q = cfg[f"naive_over_fused_{mode}"]
        cells += [_fmt(q.get("time"), ".1f") + ("×" if q.get("time") else ""),
                  _fmt(q.get("footprint"), ".1f") + ("×" if q.get("footprint") else "")]
    body.append(cells)
    lines += _table(header, body)
    for mode in ("jvp", "vjp"):
        why = cfg[f"naive_{mode}"].get("skipped")
        if why:
            lines.append(f"  naive {mode.upper()}: {why}")
    return "\n".join(lines)


def _replicated_title(cfg: dict[str, Any]) -> str:
    losses = cfg.get("losses") or []
    which = ", ".join(f"`{l.removeprefix('loss:')}`" for l in losses[:4]) + \
        (f" and {len(losses) - 4} more" if len(losses) > 4 else "")
    return (f"replicated loss{' ' + which if which else ''}: B={cfg['batch']} P={cfg['patches']} "
            f"C={cfg['channels']} G={cfg['groups']} K={cfg['classes']} "
            f"({cfg['replicas_per_example']:,} replica"
            f"{'' if cfg['replicas_per_example'] == 1 else 's'} per example), fused vs naive "
            f"(a tangent on the block output; VJP = gradient of the mean loss)")


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Writes the result as JSON, whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    _check_writable(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise BenchError(f"cannot write `{path}`: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_writable(path: Path) -> None:
    if not path.parent.is_dir():
        raise BenchError(f"cannot write `{path}`: folder `{path.parent}` does not exist "
                         f"(create it with `mkdir -p {path.parent}`)")
    if path.is_dir():
        raise BenchError(f"cannot write `{path}`: it is a folder; give a file name such as "
                         f"`{path / 'bench.json'}`")


# --- command line ----------------------------------------------------------------------------

def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {low}, got {text!r}")
        return n
    return parse


def _names(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def add_arguments(parser) -> None:
    """Adds ``fgc bench``'s arguments to an :mod:`argparse` (sub)parser and sets ``fn=run``."""
    parser.description = ("Compile time, step time, memory and FLOPs of a spec's train step "
                          "under each algorithm, side by side on synthetic data, plus the "
                          "fused vs naive replicated local loss.")
    parser.add_argument("spec", help="the .fg spec to measure")
    parser.add_argument("--algorithms", type=_names, default=None, metavar="A,B,...",
                        help="comma-separated algorithms (default: every preset the spec "
                             "can run)")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=128,
                        help="examples per step (default: 128)")
    parser.add_argument("--steps", type=_int_at_least(1), default=20,
                        help="timed steps per algorithm (default: 20)")
    parser.add_argument("--warmup", type=_int_at_least(0), default=3,
                        help="untimed steps before them (default: 3)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="seed (default: 0)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write every measurement to FILE as JSON")
    parser.add_argument("--no-replicated", action="store_true",
                        help="skip the fused vs naive replicated-loss comparison")
    parser.add_argument("--naive-limit-gib", type=float, default=NAIVE_LIMIT_BYTES / 2**30,
                        metavar="GIB", help="run the naive replicated loss only when XLA "
                        "says it needs at most this much (default: 4)")
    parser.set_defaults(fn=run)


def run(args) -> int:
    """Runs ``fgc bench`` from parsed arguments: progress on stderr, the report on stdout.

    FgError propagates, for the CLI to print.
    """
    if args.json:
        _check_writable(Path(args.json))  # fail before minutes of measuring, not after
    result = bench_spec(args.spec, args.algorithms, batch_size=args.batch_size,
                        steps=args.steps, warmup=args.warmup, seed=getattr(args, "seed", 0),
                        replicated=not args.no_replicated,
                        naive_limit_bytes=int(getattr(args, "naive_limit_gib", 4.0) * 2**30),
                        log=lambda line: print(f"fgc bench: {line}", file=sys.stderr,
                                               flush=True))
    print(format_report(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0
