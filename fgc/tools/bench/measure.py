"""`fgc bench`'s measurement of each algorithm's train step, side by side in one process."""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fgc.errors import FgError
from fgc.tools.bench.base import NAIVE_LIMIT_BYTES, BenchError
from fgc.tools.bench.ceilings import measure_ceilings
from fgc.tools.bench.profile import check_profile_dir, trace_steps
from fgc.tools.bench.replicated import _replicated_compare, replicated_configs
from fgc.tools.bench.xla import (_device_peak, _flops, _hlo_text, _lower_compile_choosing,
                                 _memory, _spread)
from fgc.tools.common import load_program

_FIGURES = ("compile_seconds", "step_seconds", "images_per_second", "flops",
            "flops_per_second", "footprint_bytes", "device_peak_bytes")


# --- the train step of each algorithm --------------------------------------------------------

def supported_algorithms(spec) -> tuple[list[str], dict[str, str]]:
    """The preset algorithms a spec can run, and for each other preset why not.

    Args:
      spec: a ``.fg`` path or a loaded :class:`~fgc.plan.program.Program`.

    Returns:
      ``(names, skipped)``: presets whose ``Program.plan`` succeeds, in preset order, and
      preset → the first line of the diagnostic that stopped it.
    """
    from fgc.front.config import presets
    prog = load_program(spec)
    chosen, skipped = [], {}
    for name, algo in presets().items():
        if algo.estimator.kind == "project":  # Ren et al.'s seven by default; guesses by name
            continue
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
                     seed: int, device, profile_dir: Path | None = None,
                     profile_steps: int = 3, precision: str | None = None,
                     blockwise: bool = True) -> tuple[dict[str, Any], Any]:
    """Measures one algorithm's train step; returns the row and the sizes of the
    network's replicated losses (read before the step donates the network's buffers)."""
    import jax
    import numpy as np

    from fgc.learning.estimators import UpdateRule
    from fgc.training.train import make_step, prepare

    t0 = time.perf_counter()
    run = prepare(prog, algorithm=name, dataset=data, batch_size=batch_size, seed=seed,
                  precision=precision)
    rule = run.rule if blockwise else UpdateRule.build(run.plan, run.net, blockwise=False)
    step = make_step(rule, run.tx)
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

    compiled, lower_s, compile_s, options = _lower_compile_choosing(
        step, net, opt_state, *batch(-1), schedules=rule.schedules())
    times = []
    for i in range(warmup + steps):
        x, y, key = batch(i)
        t = time.perf_counter()
        net, opt_state, losses = compiled(net, opt_state, x, y, key)
        jax.block_until_ready((net, opt_state, losses))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    finite = all(math.isfinite(float(v)) for v in jax.device_get(losses).values())
    profile = None
    if profile_dir is not None:
        state = [net, opt_state]

        def traced(i):
            x, y, key = batch(warmup + steps + i)
            state[0], state[1], out = compiled(state[0], state[1], x, y, key)
            jax.block_until_ready((state, out))

        profile = trace_steps(profile_dir / _folder(name), profile_steps, traced,
                              hlo_text=_hlo_text(compiled))
        net, opt_state = state
    spread = _spread(times)
    flops = _flops(compiled)
    memory = _memory(compiled)
    row = {
        "algorithm": name,
        "estimator": rule.describe(),
        "pieces": rule.pieces,
        "xla_options": options,
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
        **({"profile": profile} if profile is not None else {}),
    }
    del net, opt_state, losses, compiled, step, run, rule
    gc.collect()
    return row, replicated


def _folder(name: str) -> str:
    """An algorithm name as a folder name (spec-defined names may hold any word)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "algorithm"


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


# --- the benchmark ---------------------------------------------------------------------------

def bench_spec(spec_path, algorithms: Sequence[str] | None = None, batch_size: int = 128,
               steps: int = 20, warmup: int = 3, seed: int = 0, *, replicated: bool = True,
               naive_limit_bytes: int = NAIVE_LIMIT_BYTES,
               log: Callable[[str], None] | None = None,
               profile_dir: str | os.PathLike | None = None,
               profile_steps: int = 3, precision: str | None = None,
               blockwise: bool = True) -> dict[str, Any]:
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
      profile_dir: also trace ``profile_steps`` more steps of each algorithm with
        ``jax.profiler`` into ``profile_dir/ALGORITHM/`` (:mod:`fgc.tools.bench.profile`);
        each row then has ``profile`` (the trace's path and where the steps went, by
        operation and by kind), and the result ``ceilings`` (the device's measured matmul
        and memory rates). The traced steps are not among the timed ones.
      precision: how the step's matmuls and convolutions are computed
        (:data:`fgc.lowering.modules.PRECISIONS`; default: the spec's ``train.precision``).
      blockwise: run a greedy plan's pieces one after another (the default, as
        ``fgc train`` does; :mod:`fgc.learning.blockwise`); False runs the whole network
        at once, for comparison. Each row says how many pieces its step ran (``pieces``).

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
                         ("warm-up steps", warmup, 0), ("profiled steps", profile_steps, 1)):
        if not isinstance(v, int) or v < low:
            raise BenchError(f"{what} must be an integer ≥ {low}, got {v!r}")
    log = log or (lambda _: None)
    if profile_dir is not None:
        profile_dir = Path(profile_dir)
        check_profile_dir(profile_dir)
    prog = load_program(spec_path)
    names, skipped = _select(prog, algorithms)

    import equinox as eqx
    import jax

    device = jax.devices()[0]
    data = _synthetic(prog, batch_size, seed)
    rows, configs = [], []
    for i, name in enumerate(names):
        log(f"[{i + 1}/{len(names)}] {name}: compiling and timing {steps} steps")
        row, configs = _bench_algorithm(prog, name, data, batch_size, steps, warmup, seed,
                                        device, profile_dir, profile_steps, precision,
                                        blockwise)
        rows.append(row)
    _ratios(rows)

    rep = _replicated(configs, replicated, warmup, steps, seed, naive_limit_bytes, log)
    ceilings = None
    if profile_dir is not None:
        log("measuring the device's matmul and memory ceilings for the profiles")
        ceilings = measure_ceilings(device)
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
        "precision": precision or prog.train.precision,
        "blockwise": blockwise,
        "data": "synthetic",
        "algorithms": rows,
        "skipped": skipped,
        "replicated": rep,
        **({"ceilings": ceilings} if ceilings else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _replicated(configs, replicated: bool, warmup: int, steps: int, seed: int,
                naive_limit_bytes: int, log) -> dict[str, Any]:
    """The fused vs naive replicated loss at each size the network uses, or why not."""
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
    return rep
