"""`fgc diagnose`'s measurement: the warm-up, the exact gradients of each batch, and many
independent draws of each estimator per batch and tangent count, vmapped in chunks sized
to the memory they need."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from fgc.errors import SpecError
from fgc.tools.common import gib, load_program
from fgc.tools.diagnose.base import (DEFAULT_BATCHES, DEFAULT_DRAWS, DEFAULT_TANGENTS,
                                     DEFAULT_WARMUP, KINDS, _LABEL, DiagnoseError,
                                     finite_draws)
from fgc.tools.diagnose.core import (_draws_fn, _grad_fn, _per_example_fn, build_rule,
                                     end_to_end_net)
from fgc.tools.diagnose.setup import (_batch_stream, _check_settings, _dataset, _plan,
                                      _variant_plans, target_plan)
from fgc.tools.diagnose.stats import (Leaf, _jsonable, _layer_stats, _leaves, _unit_stats,
                                      _units)

_DEFINITIONS = {
    "cos_target": "mean over batches and draws of cos(estimate, exact gradient of the "
                  "algorithm's target under its stop-gradients)",
    "cos_e2e": "as cos_target, with the end-to-end (BP) gradient; null when undefined",
    "variance": "Σᵢ Var[ĝᵢ] / ‖g‖² per batch (sample variance over the draws, g the "
                "target gradient), mean over batches",
    "ratio_measured": "variance of weight / activity perturbation, K·variance pooled "
                      "over K",
    "ratio_predicted": "REFERENCE §6 Table 1 for the fixed batch: (pq+1)/(q+1) · N · "
                       "‖ḡ‖² / mean‖gₙ‖² (p fan-in, q fan-out, N batch, gₙ exact "
                       "per-example gradients)",
}


def diagnose(spec, algorithm: str | None = None, *, tangents: Sequence[int] = DEFAULT_TANGENTS,
             batches: int = DEFAULT_BATCHES, draws: int = DEFAULT_DRAWS,
             batch_size: int | None = None, dataset=None, data_dir: str | None = None,
             seed: int | None = None, warmup_steps: int = DEFAULT_WARMUP,
             memory_budget: int | None = None, credit: str | None = None,
             chunk: int | None = None, warmup_algorithm: str | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measures cosine similarity and variance of an algorithm's forward-gradient estimates.

    Args:
      spec: spec path or loaded :class:`~fgc.plan.program.Program`.
      algorithm: a forward-gradient algorithm (preset or defined in the spec); default the
        spec's ``train.algorithm``.
      tangents: the tangent counts ``K`` to measure.
      batches: batches to average over (taken from the training set after the warm-up).
      draws: independent estimates per batch, ``K`` and estimator (≥ 2).
      batch_size: examples per batch (default: the spec's).
      dataset: ``mnist``, ``cifar10``, an ``.npz`` path, a :class:`~fgc.training.data.Dataset`, or
        ``synthetic`` (random images of the spec's input shape); default the spec's.
      data_dir: folder with ``mnist.npz`` / ``cifar10-jpeg.zip``.
      seed: seed of the initialisation, batch order and noise (default the spec's).
      warmup_steps: training steps before measuring (see the module docstring: the
        zero-initialised readout makes the end-to-end gradient zero at initialisation).
      warmup_algorithm: the algorithm those steps train with (default: ``algorithm``
        itself). One warm-up algorithm for several diagnoses measures each of them on the
        same trained network (say ``lg-bp``, which also trains the auxiliary heads that
        local guesses backpropagate through).
      memory_budget: bytes one vmapped chunk of draws may use (default a quarter of the free
        device memory).
      credit: the estimators' credit rule, ``exact`` or ``ignore_norm`` (default: the
        algorithm's).
      chunk: tangents each estimate evaluates at once (``forward(chunk = C)``, capped at
        each K): memory then grows with C, not K.
      log: progress lines (default: none).

    Returns:
      A JSON-serialisable dict (see :func:`save`): settings, ``blocks`` (per block and
      parameter group and ``K``: cosines and normalised variance per estimator), ``all``
      (the whole estimated backbone) and ``layers`` (per weight: fan-in, fan-out, variance
      per estimator, measured and Table 1-predicted variance ratio weight/activity).

    Raises:
      SpecError: bad spec or unknown algorithm.
      DiagnoseError: a backprop algorithm, bad settings, or a K too big for memory.
      DataError: the dataset cannot be loaded.
    """
    from fgc.training.train import prepare

    log = log or (lambda _: None)
    ks = _check_settings(tangents, batches, draws, batch_size, warmup_steps, seed)
    t_start = time.perf_counter()
    prog = load_program(spec)
    name, plan = _plan(prog, algorithm, credit)
    if plan.algorithm.estimator.kind == "project":
        ks = (1,)  # a projection draws one guess per step: no tangent count to vary
    variant_plans, missing = _variant_plans(prog, plan, name)
    cfg_batch = batch_size or prog.train.batch_size
    cfg_seed = prog.train.seed if seed is None else seed
    data = _dataset(prog, dataset, data_dir, cfg_batch, batches, cfg_seed)
    run = prepare(prog, algorithm=name, dataset=data, batch_size=cfg_batch, seed=cfg_seed,
                  credit=credit)
    cfg = run.train
    stream = _batch_stream(run.data, cfg.batch_size, cfg.seed, cfg.flip)
    warm = warm_up_run(prog, run, name, warmup_algorithm, data, credit)
    net = _warm_up(run, stream, warmup_steps, warm, log)
    e2e_net, e2e_note = _end_to_end(prog, plan, run, net)
    tplan = target_plan(prog, plan)
    if tplan is None:
        raise DiagnoseError(f"`{name}` has target `above`, whose exact gradient no backprop "
                            "algorithm computes; `fgc verify` checks it against the exact "
                            "projection instead")
    target_net = net if tplan is plan else end_to_end_net(tplan, run, net)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise DiagnoseError(f"chunk must be a positive integer, got {chunk!r}")
    probe = _probe(plan, variant_plans, net, ks, cfg.batch_size, memory_budget, chunk)
    t_measure = time.perf_counter()
    sums = _measure(probe, net, e2e_net, stream, run.key, batches, draws, log, target_net)

    e2e_ok = e2e_net is not None
    if e2e_ok and not sums.e2e_sq.any():
        e2e_note = ("undefined: the end-to-end gradient of the backbone is exactly zero (the "
                    "readout is zero-initialised); use --warmup-steps > 0")
        e2e_ok = False
    result = _settings(prog, plan, name, run, ks, batches, draws, warmup_steps, warm[0])
    result.update(_estimators(probe, variant_plans, missing, net, e2e_ok, e2e_note))
    result.update(_statistics(probe, sums, e2e_ok))
    result["seconds"] = {"total": time.perf_counter() - t_start,
                         "measure": time.perf_counter() - t_measure}
    return _jsonable(result)


def warm_up_run(prog, run, name: str, warmup_algorithm: str | None, data, credit):
    """``(name, run)`` of the warm-up: ``run`` itself, or the same data, batch size and seed
    prepared with ``warmup_algorithm``."""
    from fgc.training.train import prepare
    if warmup_algorithm is None or warmup_algorithm == name:
        return name, run
    return warmup_algorithm, prepare(prog, algorithm=warmup_algorithm, dataset=data,
                                     batch_size=run.train.batch_size, seed=run.train.seed,
                                     credit=credit)


def _warm_up(run, stream, warmup_steps: int, warm, log):
    """The network after ``warmup_steps`` steps of the warm-up algorithm (module docstring);
    the step donates its input. ``warm``: :func:`warm_up_run`'s ``(name, run)``; where it is
    another algorithm's run, its trained layers (parameters and batch-norm statistics)
    replace those of ``run``'s network, whose buffers (fixed heads, feedback matrices) stay."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from fgc.training.train import make_step
    name, trainer = warm
    net = run.net
    if warmup_steps:
        t0 = time.perf_counter()
        net, opt_state = trainer.init_state()
        step = make_step(trainer.rule, trainer.tx)
        for i in range(warmup_steps):
            xb, yb = next(stream)
            net, opt_state, losses = step(net, opt_state, jnp.asarray(xb), jnp.asarray(yb),
                                          jax.random.fold_in(trainer.key, i + 1))
        bad = {k: float(v) for k, v in jax.device_get(losses).items()
               if not math.isfinite(float(v))}
        if bad:
            raise DiagnoseError(f"the loss became {next(iter(bad.values()))} during the "
                                f"{warmup_steps} warm-up steps of {name}; lower the learning "
                                "rate or --warmup-steps")
        if trainer is not run:
            net = eqx.tree_at(lambda n: n.layers, run.net, net.layers)
        log(f"warm-up: {warmup_steps} steps of {name} in {time.perf_counter() - t0:.1f}s")
    return net


def _end_to_end(prog, plan, run, net):
    """The end-to-end reference: BP's gradient (the final loss, no stop-gradients).
    Returns ``(network, note)``; no network where BP cannot run on the spec."""
    e2e_net, e2e_note = None, None
    if plan.algorithm.target == "global" and not plan.algorithm.greedy:
        e2e_note = "the target of a global, non-greedy algorithm is the end-to-end gradient"
    try:
        bp = prog.plan("bp")
        e2e_net = end_to_end_net(bp, run, net)
    except SpecError as e:
        e2e_note = "undefined: " + "; ".join(d.message for d in e.diagnostics)
    return e2e_net, e2e_note


# --- what is measured, and how much memory it takes -----------------------------------------

@dataclass(frozen=True)
class _Probe:
    """What one diagnosis measures and the compiled functions that measure it."""

    ks: tuple[int, ...]
    batch: int
    leaves: list[Leaf]
    weights: list[int]  # positions in ``leaves`` of the weight leaves
    rules: dict  # kind → K → update rule
    draw_fns: dict  # kind → K → jitted draws
    per_tangent: dict  # kind → bytes one tangent of one draw needs
    budget: int
    grad: Callable
    per_example: Callable | None  # None where a layer mixes the examples of a batch

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(l.index for l in self.leaves)


def _probe(plan, variant_plans, net, ks, B: int, memory_budget: int | None,
           chunk: int | None = None) -> _Probe:
    from fgc.graph.ops import OPS
    from fgc.training.train import with_estimator

    g = plan.graph
    nodes = {n for n, grp in plan.assignment.items() if g.node(n).role == "op"
             and plan.estimator_of(grp).kind in ("forward", "project")}
    leaves = _leaves(net, plan, nodes)
    indices = tuple(l.index for l in leaves)
    n_params = sum(l.size for l in leaves)
    weights = [i for i, l in enumerate(leaves) if l.param == "weight"]
    mixes_examples = any(OPS[s.kind].mixes_examples for s in net.steps if s.kind in OPS)

    at_once = {k: min(k, chunk) if chunk else k for k in ks}
    rules = {kind: {k: build_rule(p if p.algorithm.estimator.kind == "project" else
                                  with_estimator(p, tangents=k, chunk=at_once[k] if chunk
                                                 else None), net) for k in ks}
             for kind, p in variant_plans.items()}
    available = _available_bytes()
    budget = memory_budget or max(256 << 20, available // 4)
    per_tangent = {kind: _tangent_bytes(net, B, kind, n_params) for kind in rules}
    for kind in rules:
        need = at_once[ks[-1]] * per_tangent[kind]
        if need > available:
            raise DiagnoseError(
                f"one {_LABEL[kind]} estimate with K={ks[-1]} tangents on batches of {B} needs "
                f"about {gib(need)} (the noise of every tangent is held at once), more than the "
                f"{gib(available)} free; lower --batch-size or the largest --tangents, or "
                "pass --chunk")
    draw_fns = {kind: {k: _draws_fn(rules[kind][k], indices) for k in ks} for kind in rules}
    per_example = _per_example_fn(tuple(indices[i] for i in weights)) if not mixes_examples \
        else None
    return _Probe(ks, B, leaves, weights, rules, draw_fns, per_tangent, budget, _grad_fn(),
                  per_example)


def _available_bytes() -> int:
    import jax
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # not every backend reports memory
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _tangent_bytes(net, batch: int, kind: str, n_params: int) -> int:
    """A rough upper bound on the memory one tangent of one draw needs: the noise, its
    tangents through the network and the per-draw estimate."""
    biggest = max(math.prod(s.shape) for s in net.steps)
    if kind == "activity":
        noise = batch * sum(math.prod(s) for s in net.site_shapes.values())
        return 4 * (3 * noise + 2 * batch * biggest + n_params)
    return 4 * (3 * n_params + 2 * batch * biggest)


def _chunk(draws: int, k: int, per_tangent: int, budget: int) -> int:
    """Draws per vmapped call: as many as the budget allows, a divisor of ``draws`` so
    every call has one shape (one compilation)."""
    fit = max(1, budget // max(1, k * per_tangent))
    return max(c for c in range(1, draws + 1) if draws % c == 0 and c <= fit)


# --- the measurement --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sums:
    """What the batches and draws measured, per batch and estimated leaf."""

    true_sq: np.ndarray  # [batches, leaves]: ‖g‖² of the target gradient
    e2e_sq: np.ndarray  # [batches, leaves]: ‖g_e2e‖²
    ex_sq: np.ndarray  # [batches, leaves]: Σₙ ‖∇Jₙ‖² per weight leaf
    var: dict  # kind → [K, batches, leaves]: Σ Var[ĝ]
    dots: dict  # kind → [K, batches, draws, leaves, 3]: ĝ·g, ĝ·g_e2e, ‖ĝ‖²


def _measure(p: _Probe, net, e2e_net, stream, key, batches: int, draws: int, log,
             target_net=None) -> _Sums:
    import jax.numpy as jnp

    L = len(p.leaves)
    s = _Sums(np.zeros((batches, L)), np.zeros((batches, L)), np.zeros((batches, L)),
              {kind: np.zeros((len(p.ks), batches, L)) for kind in p.rules},
              {kind: np.zeros((len(p.ks), batches, draws, L, 3)) for kind in p.rules})
    for b in range(batches):
        xb, yb = next(stream)
        x, y = jnp.asarray(xb), jnp.asarray(yb)
        true, e2e = _exact(p, s, b, net, e2e_net, x, y, target_net)
        for kind in p.rules:
            t0 = time.perf_counter()
            for ki, k in enumerate(p.ks):
                _draw(p, s, kind, ki, b, net, x, y, true, e2e, key, draws)
            log(f"batch {b + 1}/{batches} · {_LABEL[kind]} · K={','.join(map(str, p.ks))} · "
                f"{draws} draws · {time.perf_counter() - t0:.1f}s")
    return s


def _exact(p: _Probe, s: _Sums, b: int, net, e2e_net, x, y, target_net=None):
    """The target and end-to-end gradients of batch ``b`` (recording their squared norms)
    and its per-example squared gradient norms."""
    import jax.numpy as jnp

    indices = p.indices
    all_leaves = p.grad(net if target_net is None else target_net, x, y)
    true = [all_leaves[i] for i in indices]
    s.true_sq[b] = [float(jnp.vdot(t, t)) for t in true]
    if e2e_net is not None:
        e_leaves = p.grad(e2e_net, x, y)
        e2e = [e_leaves[i] for i in indices]
        s.e2e_sq[b] = [float(jnp.vdot(e, e)) for e in e2e]
    else:
        e2e = [jnp.zeros_like(t) for t in true]
    B, weights = p.batch, p.weights
    if p.per_example is not None and weights:
        sq = np.zeros(len(weights))
        c = max(d for d in range(1, min(B, 16) + 1) if B % d == 0)
        for i in range(0, B, c):
            sq += np.asarray(p.per_example(net, x[i:i + c], y[i:i + c]), np.float64)
        s.ex_sq[b, weights] = sq
    return true, e2e


def _draw(probe: _Probe, s: _Sums, kind: str, ki: int, b: int, net, x, y, true, e2e, run_key,
          draws: int) -> None:
    """``draws`` estimates of batch ``b`` with the ``ki``-th tangent count, in chunks."""
    import jax

    k = probe.ks[ki]
    leaves = probe.leaves
    c = _chunk(draws, k, probe.per_tangent[kind], probe.budget)
    s1 = [np.zeros(l.shape) for l in leaves]
    s2 = [np.zeros(l.shape) for l in leaves]
    key = jax.random.fold_in(jax.random.fold_in(run_key, 1_000_003 + b),
                             KINDS.index(kind) * 1000 + k)
    for start in range(0, draws, c):
        keys = jax.random.split(jax.random.fold_in(key, start), c)
        a1, a2, d = probe.draw_fns[kind][k](net, x, y, keys, true, e2e)
        for i in range(len(leaves)):
            s1[i] += np.asarray(a1[i], np.float64)
            s2[i] += np.asarray(a2[i], np.float64)
        s.dots[kind][ki, b, start:start + c] = finite_draws(
            d, f"the {_LABEL[kind]} estimate (batch {b + 1}, K={k})")
    s.var[kind][ki, b] = [float((q - p * p / draws).sum() / (draws - 1))
                          for p, q in zip(s1, s2)]


# --- the result -------------------------------------------------------------------------------

def _settings(prog, plan, name, run, ks, batches, draws, warmup_steps,
              warmup_algorithm: str | None = None) -> dict[str, Any]:
    import jax
    return {
        "fgc_diagnose": 1,
        "spec": str(prog.path),
        "title": prog.graph.meta.get("title"),
        "algorithm": name,
        "target": plan.algorithm.target,
        "greedy": plan.algorithm.greedy,
        "estimator": plan.algorithm.estimator.describe(),
        "credit": plan.algorithm.estimator.credit,
        "dataset": run.data.name,
        "data_source": run.data.source,
        "batch_size": run.train.batch_size,
        "batches": batches,
        "draws": draws,
        "tangents": list(ks),
        "seed": run.train.seed,
        "warmup_steps": warmup_steps,
        "warmup_algorithm": (warmup_algorithm or name) if warmup_steps else None,
        "device": _device(),
        "jax": jax.__version__,
    }


def _estimators(p: _Probe, variant_plans, missing, net, e2e_ok, e2e_note) -> dict[str, Any]:
    rules = p.rules
    return {
        "estimated_parameters": sum(l.size for l in p.leaves),
        "estimators": {kind: {"available": kind in rules, "reason": missing.get(kind),
                              "passes": build_rule(variant_plans[kind], net).describe()
                              if kind in rules else None} for kind in KINDS},
        "end_to_end": {"available": e2e_ok, "note": e2e_note},
        "table1_prediction": {
            "available": p.per_example is not None,
            "note": None if p.per_example is not None else
            "needs exact per-example gradients, which a layer that mixes the examples of a "
            "batch (batch norm) does not have"},
        "definitions": _DEFINITIONS,
    }


def _statistics(p: _Probe, s: _Sums, e2e_ok: bool) -> dict[str, Any]:
    leaves, ks, rules = p.leaves, p.ks, p.rules
    e2e_sq = s.e2e_sq if e2e_ok else None
    return {
        "blocks": [_unit_stats(u, label, leaves, ks, rules, s.true_sq, e2e_sq, s.var, s.dots)
                   for label, u in _units(leaves)],
        "all": _unit_stats(list(range(len(leaves))), "all", leaves, ks, rules, s.true_sq,
                           e2e_sq, s.var, s.dots),
        "layers": [_layer_stats(i, leaves[i], ks, rules, s.true_sq, s.ex_sq, s.var, s.dots,
                                p.batch, p.per_example is not None) for i in p.weights],
    }


def _device() -> str:
    import jax
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or ""
    return f"{d.platform} ({kind})" if kind and kind != d.platform else d.platform
