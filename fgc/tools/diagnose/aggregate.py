"""`fgc diagnose --aggregate A,B,...`: how each aggregation of the K tangents does.

For the algorithm's own estimator (its perturbation kind, noise and credit), and for every
aggregation named (:mod:`fgc.learning.aggregate`: ``mean``, ``sum``, ``orthogonal``) and
every ``K``, it measures on the same batches and the same noise draws

* the cosine of the estimate with the true gradient of the algorithm's target, per block
  and over the whole estimated backbone, averaged over draws and batches;
* the normalised variance ``Σᵢ Var[ĝᵢ] / ‖E ĝ‖²`` over the draws of one batch, with
  ``E ĝ = c·g`` the aggregation's expectation (``c = K`` for ``sum``, else 1), so an
  estimator and a multiple of it read the same.

``sum`` is ``K × mean`` draw for draw: its cosine and normalised variance equal the mean's
(it differs only in the step size). The numbers go to ``diagnose.json`` (key
``aggregate``) and the figure ``aggregate.png``.

Example:
    >>> r = diagnose_aggregations("specs/mixer-m-1-16.fg", "lg-fg-a", dataset="mnist",
    ...                           tangents=(1, 4, 16))                      # doctest: +SKIP
    >>> r["aggregate"]["all"]["orthogonal"]["cos_target"]                   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fgc.tools.diagnose.base import (DEFAULT_BATCHES, DEFAULT_DRAWS, DEFAULT_TANGENTS,
                                     DEFAULT_WARMUP, DiagnoseError, _block_label, finite_draws,
                                     _subtitle, _target_words)
from fgc.tools.diagnose.report import write_result

AGGREGATE_PLOT = "aggregate.png"
_DEFINITIONS = {
    "cos_target": "mean over batches and draws of cos(estimate, exact gradient of the "
                  "algorithm's target under its stop-gradients)",
    "variance": "Σᵢ Var[ĝᵢ] / ‖c·g‖² per batch (sample variance over the draws, g the target "
                "gradient, c the aggregation's expectation factor: K for sum, else 1), mean "
                "over batches",
    "expectation": "c with E[estimate] = c·g for each K",
}


def diagnose_aggregations(spec, algorithm: str | None = None, *,
                          aggregations: Sequence[str] = ("mean", "sum", "orthogonal"),
                          tangents: Sequence[int] = DEFAULT_TANGENTS,
                          batches: int = DEFAULT_BATCHES, draws: int = DEFAULT_DRAWS,
                          batch_size: int | None = None, dataset=None,
                          data_dir: str | None = None, seed: int | None = None,
                          warmup_steps: int = DEFAULT_WARMUP, credit: str | None = None,
                          chunk: int | None = None, memory_budget: int | None = None,
                          warmup_algorithm: str | None = None,
                          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cosine and variance against K of each aggregation of an algorithm's estimator.

    Args:
      aggregations: registered aggregation names to compare.
      chunk: tangents each estimate evaluates at once (``forward(chunk = C)``), capped at K.
      spec, algorithm, tangents, batches, draws, batch_size, dataset, data_dir, seed,
        warmup_steps, warmup_algorithm, credit, memory_budget, log: as
        :func:`fgc.tools.diagnose.diagnose`.

    Returns:
      A JSON-serialisable dict: the settings, ``aggregate`` (``all`` and ``blocks``: per
      aggregation, per K, ``cos_target``, ``cos_target_std``, ``variance``, ``expectation``)
      and ``definitions``.
    """
    import jax

    from fgc.front.config import aggregations as known
    from fgc.learning.aggregate import aggregation
    from fgc.tools.common import load_program
    from fgc.tools.diagnose.core import _draws_fn, _grad_fn, build_rule
    from fgc.tools.diagnose.measure import (_available_bytes, _chunk, _settings,
                                            _tangent_bytes, _warm_up, warm_up_run)
    from fgc.tools.diagnose.setup import _batch_stream, _check_settings, _dataset, _plan
    from fgc.tools.diagnose.stats import _jsonable, _leaves, _units
    from fgc.training.train import prepare, with_estimator

    log = log or (lambda _: None)
    ks = _check_settings(tangents, batches, draws, batch_size, warmup_steps, seed)
    aggs = tuple(dict.fromkeys(aggregations))
    bad = [a for a in aggs if a not in known()]
    if not aggs or bad:
        raise DiagnoseError(f"unknown aggregation `{bad[0] if bad else ''}`; known: "
                            f"{', '.join(known())}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise DiagnoseError(f"chunk must be a positive integer, got {chunk!r}")
    t_start = time.perf_counter()
    prog = load_program(spec)
    name, plan = _plan(prog, algorithm, credit)
    cfg_batch = batch_size or prog.train.batch_size
    cfg_seed = prog.train.seed if seed is None else seed
    data = _dataset(prog, dataset, data_dir, cfg_batch, batches, cfg_seed)
    run = prepare(prog, algorithm=name, dataset=data, batch_size=cfg_batch, seed=cfg_seed,
                  credit=credit)
    B = run.train.batch_size
    stream = _batch_stream(run.data, B, run.train.seed, run.train.flip)
    warm = warm_up_run(prog, run, name, warmup_algorithm, data, credit)
    net = _warm_up(run, stream, warmup_steps, warm, log)

    g = plan.graph
    nodes = {n for n, grp in plan.assignment.items() if g.node(n).role == "op"
             and plan.estimator_of(grp).kind == "forward"}
    leaves = _leaves(net, plan, nodes)
    indices = tuple(l.index for l in leaves)
    n_params = sum(l.size for l in leaves)
    at_once = {k: min(k, chunk) if chunk else k for k in ks}
    fns = {a: {k: _draws_fn(build_rule(with_estimator(plan, tangents=k, aggregate=a,
                                                      chunk=at_once[k] if chunk else None),
                                       net), indices) for k in ks} for a in aggs}
    per_tangent = _tangent_bytes(net, B, plan.algorithm.estimator.perturb, n_params)
    budget = memory_budget or max(256 << 20, _available_bytes() // 4)
    grad = _grad_fn()

    L, nk = len(leaves), len(ks)
    true_sq = np.zeros((batches, L))
    var = {a: np.zeros((nk, batches, L)) for a in aggs}
    dots = {a: np.zeros((nk, batches, draws, L, 3)) for a in aggs}
    t_measure = time.perf_counter()
    for b in range(batches):
        xb, yb = next(stream)
        x, y = jax.numpy.asarray(xb), jax.numpy.asarray(yb)
        every = grad(net, x, y)
        true = [every[i] for i in indices]
        true_sq[b] = [float(jax.numpy.vdot(t, t)) for t in true]
        for a in aggs:
            t0 = time.perf_counter()
            for ki, k in enumerate(ks):
                # The same draws for every aggregation: sum is then K × mean exactly.
                key = jax.random.fold_in(jax.random.fold_in(run.key, 2_000_003 + b), k)
                c = _chunk(draws, at_once[k], per_tangent, budget)
                s1 = [np.zeros(l.shape) for l in leaves]
                s2 = [np.zeros(l.shape) for l in leaves]
                for start in range(0, draws, c):
                    keys = jax.random.split(jax.random.fold_in(key, start), c)
                    a1, a2, d = fns[a][k](net, x, y, keys, true, true)
                    for i in range(L):
                        s1[i] += np.asarray(a1[i], np.float64)
                        s2[i] += np.asarray(a2[i], np.float64)
                    dots[a][ki, b, start:start + c] = finite_draws(
                        d, f"the {a} estimate (batch {b + 1}, K={k})")
                var[a][ki, b] = [float((q - p * p / draws).sum() / (draws - 1))
                                 for p, q in zip(s1, s2)]
            log(f"batch {b + 1}/{batches} · {a} · K={','.join(map(str, ks))} · {draws} draws · "
                f"{time.perf_counter() - t0:.1f}s")

    scale = {a: [aggregation(a).expectation(k) for k in ks] for a in aggs}

    def unit(idx: list[int]) -> dict:
        return {a: _aggregate_stats(idx, ks, true_sq, var[a], dots[a], scale[a]) for a in aggs}

    blocks = []
    for (block, group), idx in _units(leaves):
        blocks.append({"block": block, "group": group, "params": int(sum(leaves[i].size
                                                                          for i in idx)),
                       **unit(idx)})
    result = _settings(prog, plan, name, run, ks, batches, draws, warmup_steps, warm[0])
    result.update({
        "mode": "aggregate",
        "aggregations": list(aggs),
        "chunk": chunk,
        "perturb": plan.algorithm.estimator.perturb,
        "estimated_parameters": n_params,
        "aggregate": {"all": {"block": "all", "group": None, "params": n_params,
                              **unit(list(range(L)))}, "blocks": blocks},
        "definitions": _DEFINITIONS,
        "seconds": {"total": time.perf_counter() - t_start,
                    "measure": time.perf_counter() - t_measure},
    })
    return _jsonable(result)


def _aggregate_stats(idx, ks, true_sq, var, dots, scale) -> dict:
    from fgc.tools.diagnose.stats import _cosines, _mean, _std
    tsq = true_sq[:, idx]
    tot = tsq.sum(-1)
    out = {"cos_target": [], "cos_target_std": [], "variance": [], "expectation": list(scale)}
    for ki in range(len(ks)):
        c = _cosines(dots[ki][:, :, idx], tsq, 0)
        out["cos_target"].append(_mean(c))
        out["cos_target_std"].append(_std(c))
        v = var[ki][:, idx].sum(-1)
        norm = tot * scale[ki] ** 2
        out["variance"].append(_mean(np.where(norm > 0, v / np.where(norm > 0, norm, 1),
                                              np.nan)))
    return out


# --- output -------------------------------------------------------------------------------------

def save_aggregations(result: dict, out: str | os.PathLike) -> list[Path]:
    """Writes ``diagnose.json`` and ``aggregate.png`` into ``out`` (created if missing)."""
    path = write_result(result, out)
    out = path.parent
    import matplotlib

    from fgc.tools.plot import _RC, _save
    with matplotlib.rc_context(_RC):
        _save(_draw_aggregate(result), out / AGGREGATE_PLOT, "png")
    return [path, out / AGGREGATE_PLOT]


def _draw_aggregate(r: dict):
    from fgc.tools.diagnose.figures import _COLOURS, _figure, _log2_axis
    ks = r["tangents"]
    fig, (left, right) = _figure(11.0, 4.3, 2)
    rows = r["aggregate"]
    markers = ("o", "s", "^", "D", "v")
    for i, a in enumerate(r["aggregations"]):
        colour = _COLOURS[i % len(_COLOURS)]
        style = "--" if a == "sum" else "-"  # sum lies on mean: dashed, so both show
        for ax, field in ((left, "cos_target"), (right, "variance")):
            pts = [(k, y) for k, y in zip(ks, rows["all"][a][field]) if y is not None]
            if pts:
                ax.plot(*zip(*pts), ls=style, marker=markers[i % len(markers)], color=colour,
                        lw=2.0, label=a)
            for u in rows["blocks"] if len(rows["blocks"]) > 1 else ():
                pts = [(k, y) for k, y in zip(ks, u[a][field]) if y is not None]
                if pts:
                    ax.plot(*zip(*pts), ls=style, color=colour, lw=0.8, alpha=0.35)
    first = next((y for y in rows["all"][r["aggregations"][0]]["variance"] if y), None)
    if first:
        right.plot(ks, [first * ks[0] / k for k in ks], ls=":", color="0.15", lw=1.0,
                   label="1/K")
    whole = [y for a in r["aggregations"] for y in rows["all"][a]["variance"] if y]
    if whole:  # a block whose part is exact (orthogonal, K ≥ n) must not squash the axes
        right.set_ylim(min(whole) / 10, max(whole) * 3)
    left.set_ylabel(f"cosine with {_target_words(r)}")
    right.set_ylabel("normalised variance Σ Var / ‖E ĝ‖²")
    right.set_yscale("log")
    for ax in (left, right):
        _log2_axis(ax, ks)
        ax.set_xlabel("tangents K")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("whole estimated backbone (thin: each block)", fontsize=9)
    fig.suptitle(f"{_subtitle(r)} · {r['perturb']} perturbation", fontsize=9)
    return fig


def format_aggregations(r: dict) -> str:
    """A plain-text table of a :func:`diagnose_aggregations` result."""
    from fgc.tools.diagnose.report import _fmt, _warmup_words
    ks = r["tangents"]
    lines = [_subtitle(r) + f" · {r['device']}",
             f"{r['perturb']} perturbation; target: {_target_words(r)}; warm-up: "
             f"{_warmup_words(r)}"]
    rows = r["aggregate"]["blocks"] + [r["aggregate"]["all"]]
    w = max(len(_block_label(u)) for u in rows) + max(len(a) for a in r["aggregations"]) + 5
    for field, words in (("cos_target", "cosine with the target gradient"),
                         ("variance", "normalised variance Σ Var / ‖E ĝ‖²")):
        lines += ["", words, " " * w + "".join(f"{'K=' + str(k):>10}" for k in ks)]
        for u in rows:
            for a in r["aggregations"]:
                label = f"{_block_label(u)} · {a}"
                lines.append(f"{label:<{w}}" + "".join(f"{_fmt(v):>10}" for v in u[a][field]))
    return "\n".join(lines)
