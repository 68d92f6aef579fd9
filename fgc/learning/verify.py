"""``fgc verify``: is every parameter group's update what the algorithm says it is?

On a small random batch of the spec's input shape, in float64, the mean of many
estimates of each forward-gradient group is compared with ``jax.grad`` of the
independent reference (:mod:`fgc.learning.reference`); backprop groups are
compared exactly (allclose). A forward-gradient estimate is unbiased when, for
every parameter element, ``|mean - true|`` is within a few standard errors; with
many elements the bound is Bonferroni's (a family-wise false alarm rate
``alpha``), so a layer reported biased is biased beyond reasonable doubt.

Example:
    >>> report = verify_plan(fgc.load("specs/mlp.fg").plan("fg-a"), samples=2000)  # doctest: +SKIP
    >>> report.ok, report.biased                                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fgc.errors import FgError
from fgc.learning.aggregate import aggregation
from fgc.learning.estimators import UpdateRule, node_of
from fgc.learning.feedback_reference import CHECKS, feedback_reference_grads
from fgc.learning.reference import reference_grads
from fgc.lowering.lower import lower
from fgc.lowering.modules import trainable

__all__ = ["LayerCheck", "Report", "VerifyError", "verify_plan", "z_bound"]


class VerifyError(FgError):
    """The check could not be made (the estimates themselves are not finite)."""


# Absolute round-off floor of a float64 gradient of O(1) losses: where every gradient of a
# spec is zero up to round-off (a degenerate batch, normalisations that cancel it), the
# jitted and the eager programs differ by ~1e-13, which must not read as a mismatch.
ROUND_OFF = 1e-11


def z_bound(elements: int, alpha: float) -> float:
    """The two-sided Bonferroni bound on ``max |z|`` over ``elements`` normal z-scores."""
    return statistics.NormalDist().inv_cdf(1 - alpha / (2 * max(elements, 1)))


@dataclass(frozen=True)
class LayerCheck:
    """One parameter node's verdict.

    Attributes:
      node, group: the parameter node and its group.
      rule: ``exact`` (compared allclose) or the forward estimator's description.
      elements: parameter elements compared.
      max_z: the largest ``|mean - true| / standard error`` (exact rules: 0 or inf).
      rel_error: ``‖mean - true‖ / ‖true‖``.
      noise: ``‖standard error‖ / ‖true‖``: the relative error sampling alone explains.
      ok: within the bound (exact: allclose).
      check: what it was compared with (the reference and how).
      expectation: ``c`` with ``E[estimate] = c·∇J`` by the estimator's aggregation
        (``K`` for ``sum``, else 1): the mean is compared with ``c`` times the reference.
      zero: the reference gradient is zero up to round-off on this batch, so the check
        compared the update with zero and says little about the rule.
    """

    node: str
    group: str
    rule: str
    elements: int
    max_z: float
    rel_error: float
    noise: float
    ok: bool
    check: str = "allclose vs jax.grad of the reference"
    expectation: float = 1.0
    zero: bool = False


EXACT_CHECK = "allclose vs jax.grad of the reference"
INCONCLUSIVE_HINT = ("raise --batch-size (a loss that compares examples, such as a contrastive "
                     "one, needs at least two examples besides their views) or change --seed")
MEAN_CHECK = "mean of the estimates vs jax.grad of the reference (z-score)"


@dataclass
class Report:
    algorithm: str
    credit: str
    samples: int
    batch_size: int
    bound: float
    layers: list[LayerCheck] = field(default_factory=list)
    seconds: float = 0.0
    # which check ran: unbiasedness (forward gradients), or the exact projection
    # (project(...) estimators, fgc.learning.verify_projection), and what it found
    check: str = "unbiased: the mean of the estimates against jax.grad (max |z| bound)"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(l.ok for l in self.layers)

    @property
    def biased(self) -> list[str]:
        return [l.node for l in self.layers if not l.ok]

    @property
    def inconclusive(self) -> bool:
        """Every forward-gradient node's reference gradient is zero on the batch (a
        degenerate batch: e.g. a contrastive loss over the two views of one example, which
        has no negatives and is constant): the estimates were only compared with zero."""
        means = [l for l in self.layers if l.check == MEAN_CHECK]
        return bool(means) and all(l.zero for l in means)

    def format(self) -> str:
        lines = [f"{self.algorithm} (credit {self.credit}): {self.samples} estimates of a "
                 f"batch of {self.batch_size}, float64, bound max|z| ≤ {self.bound:.2f} · "
                 f"{self.seconds:.1f}s"]
        if self.problems or not self.check.startswith("unbiased"):
            lines[0] = (f"{self.algorithm}: {self.samples} draws of a batch of "
                        f"{self.batch_size}, float64 · {self.seconds:.1f}s")
            lines.append(f"  check: {self.check}")
            lines.extend(f"  differs: {p}" for p in self.problems)
        w = max([len(l.node) for l in self.layers] + [4])
        r = max([len(l.rule) for l in self.layers] + [4])
        lines.append(f"  {'node':<{w}}  {'group':<10} {'rule':<{r}} {'max z':>8} {'rel err':>9} "
                     f"{'noise':>9}  verdict")
        for l in self.layers:
            det = l.check != MEAN_CHECK  # compared allclose, not by z-score
            z = "–" if det else ("inf" if math.isinf(l.max_z) else f"{l.max_z:.2f}")
            verdict = ("ok (zero)" if l.zero else "ok") if l.ok else ("MISMATCH" if det else "BIASED")
            lines.append(f"  {l.node:<{w}}  {l.group:<10} {l.rule:<{r}} {z:>8} "
                         f"{l.rel_error:>9.2e} {l.noise:>9.2e}  {verdict}")
        if self.check.startswith("unbiased"):  # a projection's report says its check above
            checks = sorted({l.check for l in self.layers})
            lines.append("  checks: " + "; ".join(
                f"{c} ({sum(1 for l in self.layers if l.check == c)} nodes)" for c in checks))
        word = "biased" if self.check.startswith("unbiased") else "differ from their rule"
        if self.ok and self.inconclusive:
            lines.append("  verdict: inconclusive: the reference gradient of every "
                         "forward-gradient node is zero on this random batch, so their "
                         f"estimates were only compared with zero; {INCONCLUSIVE_HINT}")
        else:
            lines.append("  verdict: " + ("every group's update matches its rule" if self.ok
                                          else f"{len(self.biased)} {word}: "
                                               f"{', '.join(self.biased)}"))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"algorithm": self.algorithm, "credit": self.credit, "samples": self.samples,
                "batch_size": self.batch_size, "bound": self.bound, "ok": self.ok,
                "inconclusive": self.inconclusive,
                "check": self.check, "problems": self.problems,
                "biased": self.biased, "seconds": self.seconds,
                "layers": [l.__dict__ for l in self.layers]}


def _batch(plan, batch_size: int, seed: int):
    shape = tuple(plan.graph.meta["input_shape"])
    classes = int(plan.graph.meta.get("classes") or 10)
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (batch_size, *shape), jnp.float64)
    y = jax.random.randint(ky, (batch_size,), 0, classes)
    return x, y


def _without_zero_weights(net, seed: int):
    """The network with zero-initialised weights (a readout with ``init = zeros``) drawn
    small and random instead: at such a point a global target's gradient on the backbone
    is exactly zero, and a check of it would pass without testing anything."""
    params, static = eqx.partition(net, trainable(net))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 3), max(len(leaves), 1))
    fixed = [0.1 * jax.random.normal(k, a.shape, a.dtype)
             if getattr(path[-1], "name", None) == "weight" and not bool(jnp.any(a)) else a
             for k, (path, a) in zip(keys, leaves)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, fixed), static)


def _by_node(tree) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.setdefault(node_of(path), []).append(np.asarray(leaf, np.float64).ravel())
    return {k: np.concatenate(v) for k, v in out.items()}


def _moments(rule: UpdateRule, net, x, y, samples: int, seed: int, chunk: int):
    """Sum and sum of squares of ``samples`` estimates, node → flat arrays."""
    # The network and batch are arguments, not constants closed over: XLA would
    # otherwise constant-fold through the weights (minutes at 17M parameters).
    @eqx.filter_jit
    def draw(net, x, y, keys):
        g = jax.vmap(lambda k: rule.estimate(net, x, y, k).grads)(keys)
        return (jax.tree_util.tree_map(lambda a: a.sum(0), g),
                jax.tree_util.tree_map(lambda a: (a * a).sum(0), g))

    keys = jax.random.split(jax.random.key(seed + 1), samples)
    total = total_sq = None
    for i in range(0, samples, chunk):  # samples is a multiple of chunk: one compilation
        s, q = draw(net, x, y, keys[i:i + chunk])
        s, q = _by_node(s), _by_node(q)
        total = s if total is None else {k: total[k] + s[k] for k in s}
        total_sq = q if total_sq is None else {k: total_sq[k] + q[k] for k in q}
    return total, total_sq


def _setup(plan, batch_size: int, seed: int):
    """What every check starts from (call under float64): the lowered network with no
    zero weights, a random batch, the plan's update rule, each node's estimator, and
    ``jax.grad`` of the independent reference per node."""
    net = _without_zero_weights(
        lower(plan, jax.random.key(seed), dtype=jnp.float64, normalize=False), seed)
    x, y = _batch(plan, batch_size, seed)
    rule = UpdateRule.build(plan)
    return net, x, y, rule, dict(rule.estimator_of), _by_node(reference_grads(net, x, y))


def verify_plan(plan, *, samples: int = 1000, batch_size: int = 4, seed: int = 0,
                alpha: float = 1e-6, chunk: int | None = None) -> Report:
    """Checks every parameter group of ``plan`` against the reference gradient.

    Args:
      plan: a :class:`~fgc.plan.program.Plan` (estimators as they will train).
      samples: estimates averaged per forward-gradient group.
      batch_size: examples in the random batch.
      seed: seeds the batch, the initial parameters and the estimates.
      alpha: family-wise false-alarm rate of the bound on max |z|.
      chunk: estimates per compiled call (default: by parameter count).
    """
    if any(plan.estimator_of(g).kind == "project" for g in set(plan.assignment.values())):
        from fgc.learning.verify_projection import verify_projection
        return verify_projection(plan, samples=samples, batch_size=batch_size, seed=seed)
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        net, x, y, rule, est_of, true = _setup(plan, batch_size, seed)
        checks = {n: EXACT_CHECK for n in true}
        feedback = {n: e for n, e in est_of.items() if e.kind in CHECKS}
        if feedback:  # feedback alignment's updates are not gradients: their own reference
            ref = feedback_reference_grads(plan, net, x, y)
            for n, e in feedback.items():
                layer = net.layers[n]
                true[n] = np.concatenate([np.asarray(ref[n][f.name], np.float64).ravel()
                                          for f in dataclasses.fields(layer) if f.name in ref[n]])
                checks[n] = CHECKS[e.kind]
        n_params = sum(v.size for v in true.values())
        forward = [n for n in true if est_of[n].kind == "forward"]
        if not forward:  # every update is deterministic: one estimate says it all
            samples = 1
        # Convolutions vmapped over many estimates came back NaN on XLA:CPU in float64
        # (specs/cnn.fg: 26 estimates of 2 examples NaN, 13 fine; each alone fine), so
        # conv nets draw a few at a time.
        cap = 8 if any(s.kind == "conv" for s in net.steps) else 256
        chunk = chunk or max(1, min(cap, samples, 32_000_000 // max(n_params, 1)))
        samples = chunk * math.ceil(samples / chunk)
        elements = sum(true[n].size for n in forward)
        bound = z_bound(elements, alpha)
        total, total_sq = _moments(rule, net, x, y, samples, seed, chunk)
        broken = sorted(n for n in total if not np.all(np.isfinite(total_sq[n])))
        if broken:
            raise VerifyError(f"estimates of {', '.join(broken[:3])}"
                              f"{' and more' if len(broken) > 3 else ''} are not finite "
                              f"(NaN or Inf) on this random batch; try --batch-size, "
                              f"--seed, or a smaller --samples chunk")
        layers = []
        order = {n: i for i, n in enumerate(plan.graph.topo())}
        # Round-off is judged against the largest gradient anywhere: a layer whose true
        # gradient is zero up to round-off (1e-16) must not fail on that round-off.
        top = max((float(np.abs(g).max()) for g in true.values() if g.size), default=0.0)
        for n, g in sorted(true.items(), key=lambda kv: order[kv[0]]):
            group = plan.assignment[n]
            scale = max(float(np.abs(g).max()) if g.size else 0.0, 1e-4 * top)
            norm = float(np.linalg.norm(g)) or 1.0
            if n not in forward:
                m = total[n] / samples  # identical draws: their mean is the update
                ok = bool(np.allclose(m, g, rtol=1e-6, atol=1e-9 * scale + ROUND_OFF))
                rule_label = "exact" if checks[n] == EXACT_CHECK else est_of[n].describe()
                layers.append(LayerCheck(n, group, rule_label, g.size, 0.0 if ok else math.inf,
                                         float(np.linalg.norm(m - g)) / norm, 0.0, ok, checks[n]))
                continue
            # The aggregation says what the estimate's expectation is (sum: K·∇J).
            c = aggregation(est_of[n].aggregate).expectation(est_of[n].tangents)
            g, scale, norm = c * g, c * scale, c * norm
            m = total[n] / samples
            var = np.maximum(total_sq[n] / samples - m * m, 0.0) * samples / max(samples - 1, 1)
            se = np.sqrt(var / samples)
            tol = 1e-9 * scale + ROUND_OFF  # float64 round-off of deterministic elements
            z = np.abs(m - g) / np.sqrt(se * se + tol * tol)
            max_z = float(z.max()) if z.size else 0.0
            zero = not g.size or float(np.abs(g).max()) <= tol
            layers.append(LayerCheck(n, group, est_of[n].describe(), g.size, max_z,
                                     float(np.linalg.norm(m - g)) / norm,
                                     float(np.linalg.norm(se)) / norm, max_z <= bound,
                                     MEAN_CHECK, c, zero))
    credits = sorted({e.credit for e in est_of.values() if e.kind == "forward"}) or ["–"]
    return Report(plan.graph.meta.get("algorithm") or "?", ",".join(credits), samples,
                  batch_size, bound, layers, time.perf_counter() - t0)
