"""`fgc diagnose`: how good are an algorithm's forward-gradient estimates?

For a spec and a forward-gradient algorithm, :func:`diagnose` measures on a few batches
of real (or synthetic) data, for every block instance and parameter group:

* the **cosine similarity** of the estimate with the true gradient of the loss the
  algorithm targets (the exact gradient under the same stop-gradient structure: LG-FG-A
  and LG-FG-W target the greedy local losses like LG-BP, FG-A and FG-W the final loss
  like BP) and with the **end-to-end** gradient (BP's), averaged over draws and batches;
* the **variance** of the estimate, ``Σᵢ Var[ĝᵢ] / ‖g‖²`` over ``draws`` independent
  estimates of the same batch (``g`` the target gradient), which falls like ``1/K`` with
  ``K`` tangents;

for each ``K`` in ``tangents``, and for **weight and activity perturbation side by side**:
whichever the user names, both estimators of the same target and greediness are run
(the algorithm with ``perturb = weights`` and with ``perturb = activity``; its noise
distribution is kept, and parameter groups that set their own estimator keep it).

Per layer it then compares the measured variance ratio weight/activity with the one
REFERENCE §6 Table 1 predicts for a single linear layer of fan-in ``p`` and fan-out ``q``
on a batch of ``N``. Table 1 counts the variance of the noise and of sampling the batch;
for a fixed batch (what is measured here: draws differ in the noise only) it reads

    weight perturbation   (pq + 1) · S           one noise draw shared by the batch
    activity perturbation (q + 1) · (S + V) / N  independent noise per example

with ``S = ‖ḡ‖²/D`` the squared batch-mean gradient and ``S + V = mean_n ‖g_n‖²/D`` the mean
squared per-example gradient (per dimension, ``D = pq``; adding Table 1's sampling terms
``V/N`` to both gives its rows back). The predicted ratio is therefore

    ratio = (pq + 1) / (q + 1) · N · S / (S + V)  ≈  fan-in × N × coherence,

between ``p`` (incoherent per-example gradients) and ``p·N`` (all examples agree); ``S`` and
``V`` are measured from exact per-example gradients. For a group-linear layer ``p`` and ``q``
are per group. The single-layer model leaves out what a real block adds: every layer of a
block is perturbed at once, so other layers' noise enters each directional derivative;
replicated losses credit each patch and group separately; a weight shared over ``P``
patches averages ``N·P`` independent activity-noise draws. The measured ratio shows how
far these move a network from Table 1.

The end-to-end gradient needs a trained readout: the readout head is zero-initialised,
so at initialisation the end-to-end gradient of every backbone parameter is exactly zero.
:func:`diagnose` therefore first trains ``warmup_steps`` steps (default 20) **with the
algorithm itself** and its optimizer, so the estimates are measured in a state the
algorithm actually visits (every algorithm trains the readout by its exact gradient, so it
is non-zero after one step). With ``warmup_steps = 0`` a zero end-to-end gradient is
reported as ``null`` (undefined), never as a cosine of 0.

Example:
    >>> from fgc.tools.diagnose import diagnose, save
    >>> result = diagnose("specs/mixer-m-1-16.fg", "lg-fg-a", dataset="mnist",
    ...                   data_dir="data", tangents=(1, 4, 16))          # doctest: +SKIP
    >>> result["blocks"][0]["activity"]["cos_target"]                    # doctest: +SKIP
    [0.21, 0.43, 0.68]
    >>> save(result, "diag/")         # diagnose.json and three PNGs     # doctest: +SKIP

Draws are vmapped in chunks sized to the memory the estimator needs (its noise is
materialised for all ``K`` tangents at once), so memory stays bounded; a ``K`` whose
single draw cannot fit is refused with a hint instead of exhausting the machine.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fgc.errors import FgError, SpecError

__all__ = ["DiagnoseError", "add_arguments", "diagnose", "format_table", "run", "save"]

DEFAULT_TANGENTS = (1, 4, 16, 64)
DEFAULT_BATCHES = 4
DEFAULT_DRAWS = 32
DEFAULT_WARMUP = 20
KINDS = ("activity", "weights")  # perturbation kinds, in the order tables show them
RESULT = "diagnose.json"
PLOTS = {"cosine": "cosine.png", "variance": "variance.png", "ratio": "variance_ratio.png"}
_LABEL = {"activity": "activity perturbation", "weights": "weight perturbation"}
_SHORT = {"activity": "act", "weights": "wt"}
# Forward-gradient presets by (target, greedy): what to suggest for a backprop algorithm.
_FG_PRESETS = {("global", False): ("fg-a", "fg-w"), ("local", True): ("lg-fg-a", "lg-fg-w")}


class DiagnoseError(FgError):
    """`fgc diagnose` cannot run as asked (bad settings, a backprop algorithm, ...)."""


# --- settings ----------------------------------------------------------------------------------

def _check_settings(tangents, batches, draws, batch_size, warmup_steps, seed) -> tuple[int, ...]:
    try:
        ks = tuple(tangents)
    except TypeError:
        ks = (tangents,)
    if not ks:
        raise DiagnoseError("no tangent counts given; pass e.g. --tangents 1,4,16,64")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad:
        raise DiagnoseError(f"tangent counts must be positive integers, got {bad[0]!r}; "
                            "pass e.g. --tangents 1,4,16,64")
    for name, v, low in (("batches", batches, 1), ("draws", draws, 2),
                         ("warmup_steps", warmup_steps, 0), ("seed", seed, 0)):
        if v is None and name == "seed":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            why = " (a variance needs at least two draws)" if name == "draws" else ""
            raise DiagnoseError(f"{name} must be an integer ≥ {low}{why}, got {v!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise DiagnoseError(f"batch_size must be a positive integer, got {batch_size!r}")
    return tuple(sorted({int(k) for k in ks}))


def _is_forward(plan) -> bool:
    """Whether some backbone parameter learns by a forward-gradient estimator."""
    g = plan.graph
    return any(plan.estimator_of(grp).kind == "forward" for n, grp in plan.assignment.items()
               if g.node(n).role == "op")


def _not_forward_error(plan, name: str) -> DiagnoseError:
    algo = plan.algorithm
    presets = _FG_PRESETS.get((algo.target, algo.greedy))
    if presets:
        hint = (f"for the same target, try `--algorithm {presets[0]}` (activity perturbation) or "
                f"`{presets[1]}` (weight perturbation)")
    else:
        hint = (f"define one with the same target in the spec, e.g. `algorithm my-fg {{ target = "
                f"{algo.target}  greedy = {str(algo.greedy).lower()}  estimator = "
                "forward(perturb = activity) }`")
    return DiagnoseError(
        f"`{name}` trains every backbone parameter by backprop: its estimate is the exact "
        "gradient (cosine 1, variance 0), so there is nothing to diagnose. `fgc diagnose` "
        f"measures forward-gradient estimators; {hint}")


def _variant_plans(prog, plan, name: str) -> tuple[dict, dict]:
    """The algorithm with weight and with activity perturbation (same target, greediness
    and noise), planned through the program so its checks (E506, E507) apply; a kind the
    spec cannot run maps to the reason in the second dict."""
    from fgc.front.config import Algorithm
    base = plan.algorithm
    plans, missing = {}, {}
    for kind in KINDS:
        est = replace(base.estimator, kind="forward", perturb=kind, tangents=1)
        algo = Algorithm(f"{name}[{kind}]", base.target, base.greedy, est, source="fgc diagnose")
        variant = replace(prog, algorithms={**prog.algorithms, algo.name: algo})
        try:
            plans[kind] = variant.plan(algo.name)
        except SpecError as e:
            missing[kind] = "; ".join(d.message for d in e.diagnostics)
    return plans, missing


# --- data ---------------------------------------------------------------------------------------

def _dataset(prog, dataset, data_dir, batch_size: int, batches: int, seed: int):
    from fgc.training.data import Dataset, load_dataset, synthetic_dataset
    from fgc.errors import DataError
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str) and dataset.lower() == "synthetic":
        meta = prog.graph.meta
        shape = tuple(meta["input_shape"])
        classes = int(meta.get("classes") or 10)
        return synthetic_dataset(n_train=max(512, batch_size * batches), n_test=classes,
                                 image_shape=shape, num_classes=classes, seed=seed)
    name = dataset or prog.train.dataset
    if name is None:
        raise DataError(f"no dataset: {prog.path} names none in its train section; pass "
                        "--dataset mnist, cifar10, an .npz path, or synthetic (random data of "
                        "the spec's input shape, for offline use)")
    return load_dataset(name, data_dir)


def _batch_stream(data, batch_size: int, seed: int, flip: bool) -> Iterator[tuple]:
    """Training batches, epoch after epoch (a small dataset wraps around)."""
    from fgc.training.data import iterate_batches
    epoch = 0
    while True:
        got = False
        for xb, yb in iterate_batches(data.x_train, data.y_train, batch_size, seed=seed,
                                      epoch=epoch, shuffle=True, drop_last=True, flip=flip):
            got = True
            yield xb, yb
        if not got:  # prepare() has checked there is one batch; be safe anyway
            return
        epoch += 1


# --- what is measured ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    """One estimated parameter array: where it sits in the gradient pytree's leaves."""

    index: int
    node: str
    param: str
    shape: tuple[int, ...]
    kind: str
    block: str
    group: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _leaves(net, plan, nodes: set[str]) -> list[Leaf]:
    import equinox as eqx
    import jax
    kinds = {s.id: s.kind for s in net.steps}
    position = {s.id: i for i, s in enumerate(net.steps)}
    flat = jax.tree_util.tree_flatten_with_path(eqx.filter(net, eqx.is_array))[0]
    out = []
    for i, (path, leaf) in enumerate(flat):
        node = path[1].key  # (.layers, [node id], .param)
        if node in nodes:
            out.append(Leaf(i, node, getattr(path[-1], "name", str(path[-1])), tuple(leaf.shape),
                            kinds[node], node.split("/", 1)[0], plan.assignment[node]))
    # Pytree leaves come in the order of sorted node ids; tables read in network order.
    return sorted(out, key=lambda l: (position[l.node], l.index))


def _fans(kind: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in and fan-out of a weight: per group for a group-linear layer."""
    if kind == "group_linear" and len(shape) == 3:
        return shape[1], shape[2]
    if kind == "token_mix":
        return shape[0], shape[-1]
    return math.prod(shape[:-1]), shape[-1]


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


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


# --- the jitted pieces --------------------------------------------------------------------------

def _grad_fn():
    import equinox as eqx
    import jax

    from fgc.learning.estimators import objective

    @eqx.filter_jit
    def grad(net, x, y):
        params, static = eqx.partition(net, eqx.is_array)
        return jax.tree_util.tree_leaves(
            jax.grad(lambda p: objective(eqx.combine(p, static).forward(x, y).losses))(params))
    return grad


def _per_example_fn(indices: tuple[int, ...]):
    """Σₙ ‖∇Jₙ‖² per selected leaf, Jₙ the objective of example n alone."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from fgc.learning.estimators import objective

    @eqx.filter_jit
    def per_example(net, x, y):
        params, static = eqx.partition(net, eqx.is_array)

        def one(xn, yn):
            g = jax.grad(lambda p: objective(
                eqx.combine(p, static).forward(xn[None], yn[None]).losses))(params)
            leaves = jax.tree_util.tree_leaves(g)
            return jnp.stack([jnp.sum(leaves[i] ** 2) for i in indices])
        return jax.vmap(one)(x, y).sum(axis=0)
    return per_example


def _draws_fn(rule, indices: tuple[int, ...]):
    """``chunk`` independent estimates of one batch, reduced to what the statistics need:
    Σ (ĝ − g) and Σ (ĝ − g)² per dimension (the variance, without cancellation), and per
    draw and leaf ĝ·g, ĝ·g_e2e and ‖ĝ‖² (the cosines of any set of leaves)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    @eqx.filter_jit
    def draws(net, x, y, keys, true, e2e):
        def one(key):
            leaves = jax.tree_util.tree_leaves(rule.estimate(net, x, y, key).grads)
            est = [leaves[i] for i in indices]
            err = [a - t for a, t in zip(est, true)]
            dots = jnp.stack([jnp.stack([jnp.vdot(a, t), jnp.vdot(a, e), jnp.vdot(a, a)])
                              for a, t, e in zip(est, true, e2e)])  # [leaves, 3]
            return err, dots
        err, dots = jax.vmap(one)(keys)
        return [e.sum(0) for e in err], [(e * e).sum(0) for e in err], dots
    return draws


# --- the diagnosis ------------------------------------------------------------------------------

def diagnose(spec, algorithm: str | None = None, *, tangents: Sequence[int] = DEFAULT_TANGENTS,
             batches: int = DEFAULT_BATCHES, draws: int = DEFAULT_DRAWS,
             batch_size: int | None = None, dataset=None, data_dir: str | None = None,
             seed: int | None = None, warmup_steps: int = DEFAULT_WARMUP,
             memory_budget: int | None = None, credit: str | None = None,
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
      warmup_steps: training steps with the algorithm itself before measuring (see the
        module docstring: the zero-initialised readout makes the end-to-end gradient zero
        at initialisation).
      memory_budget: bytes one vmapped chunk of draws may use (default a quarter of the free
        device memory).
      credit: the estimators' credit rule, ``exact`` or ``ignore_norm`` (default: the
        algorithm's).
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
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from fgc.learning.estimators import UpdateRule
    from fgc.lowering.lower import lower
    from fgc.graph.ops import OPS
    from fgc.plan.program import Program, load
    from fgc.training.train import make_step, prepare, with_estimator

    log = log or (lambda _: None)
    ks = _check_settings(tangents, batches, draws, batch_size, warmup_steps, seed)
    t_start = time.perf_counter()
    prog = spec if isinstance(spec, Program) else load(spec)
    name = algorithm or prog.train.algorithm
    if name is None:
        raise DiagnoseError(f"{prog.path} names no algorithm in its train section; pass "
                            "--algorithm, e.g. --algorithm lg-fg-a")
    plan = prog.plan(name)  # SpecError (with a suggestion) for an unknown name
    if not _is_forward(plan):
        raise _not_forward_error(plan, name)
    if plan.algorithm.estimator.kind != "forward":
        raise DiagnoseError(f"`{name}` uses backprop and only some parameter groups set a "
                            "forward estimator; diagnose varies the algorithm's estimator, so "
                            "give the algorithm a forward(...) estimator instead")
    if credit is not None:
        try:
            plan = with_estimator(plan, credit=credit)
        except ValueError as e:
            raise DiagnoseError(f"{e}; pass --credit exact or --credit ignore_norm") from None
    variant_plans, missing = _variant_plans(prog, plan, name)
    cfg_batch = batch_size or prog.train.batch_size
    cfg_seed = prog.train.seed if seed is None else seed
    data = _dataset(prog, dataset, data_dir, cfg_batch, batches, cfg_seed)
    run = prepare(prog, algorithm=name, dataset=data, batch_size=cfg_batch, seed=cfg_seed,
                  credit=credit)
    cfg = run.train
    B = cfg.batch_size

    # Warm-up with the algorithm itself (module docstring); the step donates its input.
    stream = _batch_stream(run.data, B, cfg.seed, cfg.flip)
    net = run.net
    if warmup_steps:
        t0 = time.perf_counter()
        net, opt_state = run.init_state()
        step = make_step(run.rule, run.tx)
        for i in range(warmup_steps):
            xb, yb = next(stream)
            net, opt_state, losses = step(net, opt_state, jnp.asarray(xb), jnp.asarray(yb),
                                          jax.random.fold_in(run.key, i + 1))
        bad = {k: float(v) for k, v in jax.device_get(losses).items()
               if not math.isfinite(float(v))}
        if bad:
            raise DiagnoseError(f"the loss became {next(iter(bad.values()))} during the "
                                f"{warmup_steps} warm-up steps; lower the learning rate or "
                                "--warmup-steps")
        log(f"warm-up: {warmup_steps} steps of {name} in {time.perf_counter() - t0:.1f}s")

    # The end-to-end reference: BP's gradient (the final loss, no stop-gradients).
    e2e_net, e2e_note = None, None
    if plan.algorithm.target == "global" and not plan.algorithm.greedy:
        e2e_note = "the target of a global, non-greedy algorithm is the end-to-end gradient"
    try:
        bp = prog.plan("bp")
        ref = lower(bp, jax.random.key(0), stats=(run.data.mean, run.data.std))
        e2e_net = eqx.tree_at(lambda n: n.layers, ref, net.layers)
    except SpecError as e:
        e2e_note = "undefined: " + "; ".join(d.message for d in e.diagnostics)

    g = plan.graph
    nodes = {n for n, grp in plan.assignment.items() if g.node(n).role == "op"
             and plan.estimator_of(grp).kind == "forward"}
    leaves = _leaves(net, plan, nodes)
    indices = tuple(l.index for l in leaves)
    n_params = sum(l.size for l in leaves)
    weights = [i for i, l in enumerate(leaves) if l.param == "weight"]
    mixes_examples = any(OPS[s.kind].mixes_examples for s in net.steps if s.kind in OPS)

    rules = {kind: {k: UpdateRule.build(with_estimator(p, tangents=k), net) for k in ks}
             for kind, p in variant_plans.items()}
    available = _available_bytes()
    budget = memory_budget or max(256 << 20, available // 4)
    per_tangent = {kind: _tangent_bytes(net, B, kind, n_params) for kind in rules}
    for kind in rules:
        need = ks[-1] * per_tangent[kind]
        if need > available:
            raise DiagnoseError(
                f"one {_LABEL[kind]} estimate with K={ks[-1]} tangents on batches of {B} needs "
                f"about {_gib(need)} (the noise of every tangent is held at once), more than the "
                f"{_gib(available)} free; lower --batch-size or the largest --tangents")
    draw_fns = {kind: {k: _draws_fn(rules[kind][k], indices) for k in ks} for kind in rules}
    grad = _grad_fn()
    per_example = _per_example_fn(tuple(indices[i] for i in weights)) if not mixes_examples \
        else None

    L = len(leaves)
    true_sq = np.zeros((batches, L))
    e2e_sq = np.zeros((batches, L))
    ex_sq = np.zeros((batches, L))  # Σₙ ‖∇Jₙ‖² per weight leaf
    var = {kind: np.zeros((len(ks), batches, L)) for kind in rules}
    dots = {kind: np.zeros((len(ks), batches, draws, L, 3)) for kind in rules}
    t_measure = time.perf_counter()
    for b in range(batches):
        xb, yb = next(stream)
        x, y = jnp.asarray(xb), jnp.asarray(yb)
        all_leaves = grad(net, x, y)
        true = [all_leaves[i] for i in indices]
        true_sq[b] = [float(jnp.vdot(t, t)) for t in true]
        if e2e_net is not None:
            e_leaves = grad(e2e_net, x, y)
            e2e = [e_leaves[i] for i in indices]
            e2e_sq[b] = [float(jnp.vdot(e, e)) for e in e2e]
        else:
            e2e = [jnp.zeros_like(t) for t in true]
        if per_example is not None and weights:
            sq = np.zeros(len(weights))
            c = max(d for d in range(1, min(B, 16) + 1) if B % d == 0)
            for i in range(0, B, c):
                sq += np.asarray(per_example(net, x[i:i + c], y[i:i + c]), np.float64)
            ex_sq[b, weights] = sq
        for kind in rules:
            t0 = time.perf_counter()
            for ki, k in enumerate(ks):
                c = _chunk(draws, k, per_tangent[kind], budget)
                s1 = [np.zeros(l.shape) for l in leaves]
                s2 = [np.zeros(l.shape) for l in leaves]
                key = jax.random.fold_in(jax.random.fold_in(run.key, 1_000_003 + b),
                                         KINDS.index(kind) * 1000 + k)
                for start in range(0, draws, c):
                    keys = jax.random.split(jax.random.fold_in(key, start), c)
                    a1, a2, d = draw_fns[kind][k](net, x, y, keys, true, e2e)
                    for i in range(L):
                        s1[i] += np.asarray(a1[i], np.float64)
                        s2[i] += np.asarray(a2[i], np.float64)
                    dots[kind][ki, b, start:start + c] = np.asarray(d, np.float64)
                var[kind][ki, b] = [float((q - p * p / draws).sum() / (draws - 1))
                                    for p, q in zip(s1, s2)]
            log(f"batch {b + 1}/{batches} · {_LABEL[kind]} · K={','.join(map(str, ks))} · "
                f"{draws} draws · {time.perf_counter() - t0:.1f}s")

    e2e_ok = e2e_net is not None
    if e2e_ok and not e2e_sq.any():
        e2e_note = ("undefined: the end-to-end gradient of the backbone is exactly zero (the "
                    "readout is zero-initialised); use --warmup-steps > 0")
        e2e_ok = False
    result = {
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
        "batch_size": B,
        "batches": batches,
        "draws": draws,
        "tangents": list(ks),
        "seed": cfg.seed,
        "warmup_steps": warmup_steps,
        "warmup_algorithm": name if warmup_steps else None,
        "device": _device(),
        "jax": jax.__version__,
        "estimated_parameters": n_params,
        "estimators": {kind: {"available": kind in rules, "reason": missing.get(kind),
                              "passes": UpdateRule.build(variant_plans[kind], net).describe()
                              if kind in rules else None} for kind in KINDS},
        "end_to_end": {"available": e2e_ok, "note": e2e_note},
        "table1_prediction": {
            "available": per_example is not None,
            "note": None if per_example is not None else
            "needs exact per-example gradients, which a layer that mixes the examples of a "
            "batch (batch norm) does not have"},
        "definitions": {
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
        },
    }
    units = _units(leaves)
    result["blocks"] = [_unit_stats(u, label, leaves, ks, rules, true_sq, e2e_sq if e2e_ok else
                                    None, var, dots) for label, u in units]
    result["all"] = _unit_stats(list(range(L)), "all", leaves, ks, rules, true_sq,
                                e2e_sq if e2e_ok else None, var, dots)
    result["layers"] = [_layer_stats(i, leaves[i], ks, rules, true_sq, ex_sq, var, dots, B,
                                     per_example is not None) for i in weights]
    result["seconds"] = {"total": time.perf_counter() - t_start,
                         "measure": time.perf_counter() - t_measure}
    return _jsonable(result)


def _device() -> str:
    import jax
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or ""
    return f"{d.platform} ({kind})" if kind and kind != d.platform else d.platform


def _units(leaves: list[Leaf]) -> list[tuple[tuple[str, str], list[int]]]:
    """Leaf indices per (block instance, parameter group), in network order."""
    units: dict[tuple[str, str], list[int]] = {}
    for i, l in enumerate(leaves):
        units.setdefault((l.block, l.group), []).append(i)
    order = {}
    for i, l in enumerate(leaves):
        order.setdefault((l.block, l.group), i)
    return sorted(units.items(), key=lambda kv: order[kv[0]])


def _cosines(d: np.ndarray, norm_sq: np.ndarray, which: int) -> np.ndarray:
    """Per batch and draw, cos(ĝ, g) over a set of leaves. ``d``: [B, R, leaves, 3]
    (ĝ·g, ĝ·g_e2e, ‖ĝ‖²); ``norm_sq``: [B, leaves] of ‖g‖²."""
    num = d[..., which].sum(-1)
    den = np.sqrt(d[..., 2].sum(-1) * norm_sq.sum(-1)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _unit_stats(idx, label, leaves, ks, rules, true_sq, e2e_sq, var, dots) -> dict:
    if isinstance(label, tuple):
        block, group = label
    else:
        block, group = label, None
    out = {"block": block, "group": group,
           "layers": sorted({leaves[i].node for i in idx}, key=[l.node for l in leaves].index),
           "params": int(sum(leaves[i].size for i in idx))}
    tsq = true_sq[:, idx]
    for kind in KINDS:
        if kind not in rules:
            out[kind] = None
            continue
        s = {"cos_target": [], "cos_target_std": [], "cos_e2e": [], "cos_e2e_std": [],
             "variance": []}
        for ki in range(len(ks)):
            d = dots[kind][ki][:, :, idx]
            c = _cosines(d, tsq, 0)
            s["cos_target"].append(_mean(c))
            s["cos_target_std"].append(_std(c))
            if e2e_sq is not None:
                c = _cosines(d, e2e_sq[:, idx], 1)
                s["cos_e2e"].append(_mean(c))
                s["cos_e2e_std"].append(_std(c))
            else:
                s["cos_e2e"].append(None)
                s["cos_e2e_std"].append(None)
            tot = tsq.sum(-1)
            v = var[kind][ki][:, idx].sum(-1)
            s["variance"].append(_mean(np.where(tot > 0, v / np.where(tot > 0, tot, 1), np.nan)))
        out[kind] = s
    return out


def _layer_stats(i, leaf: Leaf, ks, rules, true_sq, ex_sq, var, dots, batch, per_ex) -> dict:
    p, q = _fans(leaf.kind, leaf.shape)
    out = {"layer": leaf.node, "param": leaf.param, "block": leaf.block, "kind": leaf.kind,
           "shape": list(leaf.shape), "fan_in": p, "fan_out": q}
    tot = true_sq[:, i]
    for kind in KINDS:
        if kind not in rules:
            out[kind] = None
            continue
        v = var[kind][:, :, i]  # [K, batches]
        cos = [_cosines(dots[kind][ki][:, :, [i]], true_sq[:, [i]], 0) for ki in range(len(ks))]
        out[kind] = {
            "variance": [_mean(np.where(tot > 0, vk / np.where(tot > 0, tot, 1), np.nan))
                         for vk in v],
            "cos_target": [_mean(c) for c in cos],
        }
    ratio = ratio_by_k = None
    if all(k in rules for k in KINDS):
        vw, va = var["weights"][:, :, i].mean(1), var["activity"][:, :, i].mean(1)
        ks_arr = np.asarray(ks, np.float64)
        if (va > 0).all():
            ratio_by_k = list(vw / va)
            ratio = float((ks_arr * vw).mean() / (ks_arr * va).mean())
    predicted = coherence = None
    if per_ex and ex_sq[:, i].any():
        mean_ex = ex_sq[:, i] / batch  # mean over examples of ‖∇Jₙ‖²; ‖ḡ‖² is true_sq
        coherence = float(tot.sum() / mean_ex.sum())
        predicted = float((p * q + 1) / (q + 1) * batch * coherence)
    out.update({"ratio_measured": ratio, "ratio_measured_by_K": ratio_by_k,
                "ratio_predicted": predicted, "coherence": coherence})
    return out


def _mean(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _std(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.std()) if a.size else None


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


# --- output -------------------------------------------------------------------------------------

def save(result: dict, out: str | os.PathLike) -> list[Path]:
    """Writes ``diagnose.json`` and the three figures into ``out`` (created if missing).

    Figures (PNG, matplotlib's object-oriented API only, as :mod:`fgc.tools.plot`):
    ``cosine.png`` (cosine vs K per block, weight and activity perturbation),
    ``variance.png`` (normalised variance vs K, log-log, with a 1/K guide) and
    ``variance_ratio.png`` (weight/activity variance ratio vs fan-in against Table 1).

    Returns:
      The files written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiagnoseError(f"cannot write into `{out}`: it is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiagnoseError(f"cannot create `{out}`: {e.strerror or e}") from None
    path = out / RESULT
    tmp = out / f".{RESULT}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise DiagnoseError(f"cannot write `{path}`: {e.strerror or e}") from None
    written = [path]
    import matplotlib

    from fgc.tools.plot import _RC, _save
    with matplotlib.rc_context(_RC):
        for key, draw in (("cosine", _draw_cosine), ("variance", _draw_variance),
                          ("ratio", _draw_ratio)):
            fig = draw(result)
            if fig is not None:
                _save(fig, out / PLOTS[key], "png")
                written.append(out / PLOTS[key])
    return written


# Okabe & Ito, as fgc.tools.plot (black last: it is the reference lines' colour).
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F",
            "#8C564B", "#BCBD22", "#17BECF")
_STYLE = {"activity": ("-", "o"), "weights": ("--", "s")}
_KIND_MARKERS = {"dense": "o", "group_linear": "s", "token_mix": "^", "conv": "D"}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _subtitle(r: dict) -> str:
    what = r.get("title") or Path(r["spec"]).stem
    return (f"{what} · {r['algorithm']} · {r['dataset']}, batch {r['batch_size']} · "
            f"{r['batches']} batch{'es' if r['batches'] != 1 else ''} × {r['draws']} draws")


def _log2_axis(ax, ks) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(k) for k in ks])
    lo, hi = min(ks), max(ks)
    ax.set_xlim(lo / 1.3, hi * 1.3)


def _kinds(r) -> list[str]:
    return [k for k in KINDS if r["estimators"][k]["available"]]


def _block_handles(r):
    from matplotlib.lines import Line2D
    hs = [Line2D([], [], color=_COLOURS[i % len(_COLOURS)], lw=2.2, label=_block_label(u))
          for i, u in enumerate(r["blocks"])]
    hs += [Line2D([], [], color="0.15", ls=_STYLE[k][0], marker=_STYLE[k][1], label=_LABEL[k])
           for k in _kinds(r)]
    return hs


def _block_label(u: dict) -> str:
    groups = {"backbone"}
    return u["block"] if u["group"] in groups or u["group"] is None else \
        f"{u['block']} ({u['group']})"


def _draw_cosine(r: dict):
    ks = r["tangents"]
    panels = [("cos_target", _target_words(r))]
    if r["end_to_end"]["available"] and not (r["target"] == "global" and not r["greedy"]):
        panels.append(("cos_e2e", "the end-to-end (BP) gradient"))
    fig, axes = _figure(5.2 * len(panels) + 0.6, 4.3, len(panels))
    for ax, (field, words) in zip(axes, panels):
        for i, u in enumerate(r["blocks"]):
            for kind in _kinds(r):
                ys = u[kind][field]
                pts = [(k, y) for k, y in zip(ks, ys) if y is not None]
                if not pts:
                    continue
                ls, mk = _STYLE[kind]
                ax.plot(*zip(*pts), color=_COLOURS[i % len(_COLOURS)], ls=ls, marker=mk)
        ax.axhline(0.0, color="0.4", lw=0.8, zorder=0)
        _log2_axis(ax, ks)
        ax.set(xlabel="Tangents per estimate K (log₂)", ylabel="Cosine similarity",
               title=f"Estimate vs {words}")
        top = max([y for u in r["blocks"] for k in _kinds(r) for y in u[k][field]
                   if y is not None] + [0.05])
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), min(1.02, max(top * 1.12, top + 0.03)))
    fig.suptitle(f"Cosine similarity of the forward-gradient estimate\n{_subtitle(r)}",
                 fontsize=11)
    fig.legend(handles=_block_handles(r), loc="outside lower center",
               ncols=min(6, len(r["blocks"]) + len(_kinds(r))), frameon=False, handlelength=2.6)
    return fig


def _target_words(r: dict) -> str:
    if r["target"] == "global":
        return "the final-loss gradient" + ("" if r["greedy"] else " (= end to end)")
    return "its local-loss gradient" + (" (greedy)" if r["greedy"] else "")


def _draw_variance(r: dict):
    ks = r["tangents"]
    fig, (ax,) = _figure(6.4, 4.6)
    from matplotlib.lines import Line2D
    for i, u in enumerate(r["blocks"]):
        for kind in _kinds(r):
            pts = [(k, y) for k, y in zip(ks, u[kind]["variance"]) if y is not None and y > 0]
            if pts:
                ls, mk = _STYLE[kind]
                ax.plot(*zip(*pts), color=_COLOURS[i % len(_COLOURS)], ls=ls, marker=mk)
    guides = []
    for kind in _kinds(r):
        firsts = [u[kind]["variance"][0] for u in r["blocks"]
                  if u[kind]["variance"][0] is not None and u[kind]["variance"][0] > 0]
        if firsts:
            v1 = math.exp(np.mean(np.log(firsts))) * ks[0]
            xs = np.array([ks[0], ks[-1]], np.float64)
            ax.plot(xs, v1 / xs, color="0.55", ls=":", lw=1.4, zorder=0)
            guides.append(kind)
    _log2_axis(ax, ks)
    ax.set_yscale("log")
    ax.set(xlabel="Tangents per estimate K (log₂)",
           ylabel="Normalised variance  Σᵢ Var[ĝᵢ] / ‖g‖²",
           title="Variance of the estimate falls like 1/K")
    handles = _block_handles(r)
    if guides:
        handles.append(Line2D([], [], color="0.55", ls=":", lw=1.4,
                              label="∝ 1/K guide"))
    fig.suptitle(_subtitle(r), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False,
               handlelength=2.6)
    return fig


def _draw_ratio(r: dict):
    from matplotlib.lines import Line2D
    layers = [l for l in r["layers"] if l["ratio_measured"] is not None]
    if not layers:
        return None
    fig, (ax,) = _figure(6.6, 5.0)
    blocks = [u["block"] for u in r["blocks"]]
    colour = {b: _COLOURS[i % len(_COLOURS)] for i, b in enumerate(blocks)}
    n = r["batch_size"]
    ps = [l["fan_in"] for l in layers]
    for l in layers:
        c = colour.get(l["block"], "0.3")
        mk = _KIND_MARKERS.get(l["kind"], "P")
        x = l["fan_in"] * _jitter(l, layers)
        ax.plot([x], [l["ratio_measured"]], ls="none", marker=mk, color=c, ms=7.5,
                markeredgecolor="white", markeredgewidth=0.6, zorder=3)
        if l["ratio_predicted"] is not None:
            ax.plot([x], [l["ratio_predicted"]], ls="none", marker=mk, ms=7.5,
                    markerfacecolor="none", markeredgecolor=c, markeredgewidth=1.3, zorder=3)
            ax.plot([x, x], [l["ratio_measured"], l["ratio_predicted"]], color=c, lw=0.8,
                    alpha=0.6, zorder=2)
    lo, hi = min(ps) / 1.6, max(ps) * 1.6
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, color="0.35", ls="--", lw=1.1, zorder=1)
    ax.plot(xs, xs * n, color="0.35", ls=":", lw=1.3, zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set(xlabel="Fan-in p of the layer (per group for group-linear)",
           ylabel="Variance ratio  weight / activity perturbation",
           title="Weight vs activity perturbation against REFERENCE §6 Table 1")
    handles = [Line2D([], [], color=colour[b], lw=0, marker="o", ms=7, label=b) for b in blocks
               if any(l["block"] == b for l in layers)]
    kinds = sorted({l["kind"] for l in layers})
    handles += [Line2D([], [], color="0.25", lw=0, marker=_KIND_MARKERS.get(k, "P"), ms=7,
                       label=k.replace("_", "-")) for k in kinds]
    handles += [
        Line2D([], [], color="0.25", lw=0, marker="o", ms=7, label="measured (filled)"),
        Line2D([], [], color="0.25", lw=0, marker="o", ms=7, markerfacecolor="none",
               label="Table 1, this batch's coherence (hollow)"),
        Line2D([], [], color="0.35", ls="--", lw=1.1,
               label="Table 1 limit: incoherent examples, ratio = p"),
        Line2D([], [], color="0.35", ls=":", lw=1.3,
               label=f"Table 1 limit: coherent examples, ratio = p·N (N = {n})"),
    ]
    fig.suptitle(_subtitle(r), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False,
               handlelength=2.4)
    return fig


def _jitter(layer: dict, layers: list[dict]) -> float:
    """Spreads layers of equal fan-in a little apart along the (log) x axis."""
    same = [l for l in layers if l["fan_in"] == layer["fan_in"]]
    if len(same) == 1:
        return 1.0
    i = same.index(layer)
    return 1.07 ** (i - (len(same) - 1) / 2)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def format_table(r: dict) -> str:
    """A compact plain-text summary of a :func:`diagnose` result."""
    ks = r["tangents"]
    kinds = _kinds(r)
    lines = [_subtitle(r) + f" · {r['device']}",
             f"target: {_target_words(r)}; end-to-end: "
             + ("BP gradient" if r["end_to_end"]["available"] else
                r["end_to_end"]["note"] or "unavailable")
             + f"; warm-up: {r['warmup_steps']} steps"]
    for kind in KINDS:
        if kind not in kinds:
            lines.append(f"{_LABEL[kind]}: not run ({r['estimators'][kind]['reason']})")
    rows = r["blocks"] + [r["all"]]
    name_w = max(len(_block_label(u)) for u in rows) + 2
    sep = "/".join(_SHORT[k] for k in kinds)
    for field, words in (("cos_target", "cosine with the target gradient"),
                         ("cos_e2e", "cosine with the end-to-end gradient"),
                         ("variance", "normalised variance Σ Var / ‖g‖²")):
        if field == "cos_e2e" and not r["end_to_end"]["available"]:
            continue
        table = [[" / ".join(_fmt(u[k][field][i], 3) for k in kinds) for i in range(len(ks))]
                 for u in rows]
        cell = 2 + max(len(c) for row in table for c in row)
        lines += ["", f"{words} ({sep})",
                  " " * name_w + "".join(f"{'K=' + str(k):>{cell}}" for k in ks)]
        for u, row in zip(rows, table):
            lines.append(f"{_block_label(u):<{name_w}}" + "".join(f"{c:>{cell}}" for c in row))
    layers = r["layers"]
    if layers and all(k in kinds for k in KINDS):
        w = max(len(l["layer"]) for l in layers) + 2
        lines += ["", "variance ratio weight/activity per layer (K·variance pooled over K) vs "
                  "REFERENCE Table 1",
                  f"{'layer':<{w}}{'fan-in':>8}{'fan-out':>9}{'measured':>11}{'Table 1':>11}"
                  f"{'coherence':>11}"]
        for l in layers:
            lines.append(f"{l['layer']:<{w}}{l['fan_in']:>8}{l['fan_out']:>9}"
                         f"{_fmt(l['ratio_measured'], 1):>11}{_fmt(l['ratio_predicted'], 1):>11}"
                         f"{_fmt(l['coherence'], 3):>11}")
        note = (r.get("table1_prediction") or {}).get("note")
        if note:
            lines.append(f"Table 1 column: {note}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------

def _tangent_list(text: str) -> tuple[int, ...]:
    import argparse
    try:
        ks = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        ks = ()
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,4,16,64, got {text!r}")
    return ks


def _int_at_least(low: int):
    import argparse

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {low}, got {text!r}")
        return n
    return parse


def add_arguments(parser) -> None:
    """Adds ``fgc diagnose``'s arguments to an :mod:`argparse` (sub)parser and sets ``fn=run``."""
    parser.description = (
        "Measure how good an algorithm's forward-gradient estimates are: cosine similarity with "
        "the true gradient of its target and with the end-to-end gradient, and variance, per "
        "block and tangent count K, for weight and activity perturbation side by side, "
        "compared with Ren et al.'s Table 1. Writes diagnose.json and three PNG figures.")
    parser.add_argument("spec", help="the .fg spec")
    parser.add_argument("--algorithm", metavar="NAME",
                        help="forward-gradient algorithm, preset or the spec's (default: the "
                        "spec's train.algorithm)")
    parser.add_argument("--tangents", type=_tangent_list, default=DEFAULT_TANGENTS,
                        metavar="K,K,...", help="tangent counts K (default: 1,4,16,64)")
    parser.add_argument("--batches", type=_int_at_least(1), default=DEFAULT_BATCHES,
                        help=f"batches to average over (default: {DEFAULT_BATCHES})")
    parser.add_argument("--draws", type=_int_at_least(2), default=DEFAULT_DRAWS,
                        help=f"independent estimates per batch and K (default: {DEFAULT_DRAWS})")
    parser.add_argument("--batch-size", type=_int_at_least(1),
                        help="examples per batch (default: the spec's)")
    parser.add_argument("--dataset", help="mnist, cifar10, an .npz path, or synthetic (random "
                        "images of the spec's input shape; default: the spec's dataset)")
    parser.add_argument("--data-dir", help="folder with mnist.npz / cifar10-jpeg.zip, or "
                        "prepared by tensorflow-datasets (mnist/3.0.1/...) (searched before "
                        "$FGC_DATA_DIR, ./data, then tensorflow-datasets online)")
    parser.add_argument("--seed", type=_int_at_least(0), help="seed (default: the spec's)")
    parser.add_argument("--warmup-steps", type=_int_at_least(0), default=DEFAULT_WARMUP,
                        help="training steps with the algorithm before measuring, so the "
                        "zero-initialised readout passes an end-to-end gradient (default: "
                        f"{DEFAULT_WARMUP}; 0 reports it as undefined)")
    parser.add_argument("--credit", choices=("exact", "ignore_norm"),
                        help="credit rule of the estimators (default: the algorithm's)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="folder for diagnose.json and the figures (created if missing)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(fn=run)


def run(args) -> int:
    """Runs ``fgc diagnose`` from parsed arguments; FgError propagates, for the CLI to print."""
    def log(line: str) -> None:
        print(f"fgc diagnose: {line}", file=sys.stderr, flush=True)

    result = diagnose(args.spec, args.algorithm, tangents=args.tangents, batches=args.batches,
                      draws=args.draws, batch_size=args.batch_size, dataset=args.dataset,
                      data_dir=args.data_dir, seed=args.seed, warmup_steps=args.warmup_steps,
                      credit=getattr(args, "credit", None),
                      log=None if getattr(args, "quiet", False) else log)
    written = save(result, args.out)
    print(format_table(result))
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0
