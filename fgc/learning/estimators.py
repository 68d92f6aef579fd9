"""Update rules: how each parameter group turns the losses into an update.

Every estimator kind is a registered *pass rule* (:func:`register`) behind one
protocol, :class:`PassRule`: built once from the plan (its credit map, groups and
sites, nothing re-derived), then run as a pure function of the parameters. Three
are registered today (:mod:`fgc.learning.passes`), and they compose every
algorithm of Ren et al. (the presets of ``grammar/algorithms.fg``):

- ``backprop``: ``jax.grad`` of the objective through the plan's stop-gradient
  edges. BP, L-BP and LG-BP differ only in those edges.
- ``forward-weights``: a tangent ``v`` on every weight of the group, one
  ``jax.jvp`` for the directional derivative of every loss replica, and
  ``ĝ = credit(d) · v``.
- ``forward-activity``: per-example noise ``z`` at every ``perturb`` site, one
  ``jax.jvp`` with respect to the noise at zero, ``ĝ_u = credit(d) · z · mask``,
  and the weight gradient by backpropagating ``ĝ_u`` through that layer's own ops
  only, never across another site.

The objective is ``J = Σ_losses mean_batch Σ_replicas L``: a backbone unit
receives the gradient of each loss it feeds once (each replica's derivative flows
through its own patch and group only, REFERENCE §3), so ``∇J`` on the backbone
equals the gradient of the plain (unreplicated) losses. Head parameters after a
replicated head's ``mean`` are shared by all its replicas and are scaled back by
the replica count (the plan's ``credit.shared``); so every head learns by the exact
gradient of its single loss.

The next rules (guess projections, feedback alignment) are registrations: a class
with ``build`` and ``run`` under a new name, and an estimator that names it.

Example:
    >>> rule = UpdateRule.build(plan)                          # doctest: +SKIP
    >>> est = rule.estimate(net, images, labels, key)          # doctest: +SKIP
    >>> est.grads          # pytree shaped like eqx.filter(net, trainable(net))
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
import math
from typing import TYPE_CHECKING, Callable, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

from fgc.errors import LoweringError
from fgc.front.config import Estimator
from fgc.lowering.modules import trainable
from fgc.lowering.params import node_of  # noqa: F401  (re-exported: rules and verify read it here)

if TYPE_CHECKING:
    from fgc.lowering.lower import Network
    from fgc.plan.program import Plan

__all__ = ["Estimate", "PassRule", "RULES", "UpdateRule", "objective", "register", "rule_name",
           "sample_noise"]

EXACT = Estimator("backprop")


# --- shared pieces ---------------------------------------------------------------------------

def _rademacher(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """Independent ±1 signs, 32 from each random word.

    ``jax.random.rademacher`` spends a 32-bit draw (threefry's cost, the bulk of a
    sample's) on each sign; one bit each makes the noise of an M/8/16 site 16x cheaper
    on XLA:CPU (BENCHMARKS §5.4). Each bit of a uniform word is a fair coin,
    independent of the others, so the distribution is the same."""
    n = math.prod(shape)
    words = jax.random.bits(key, (-(-n // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)[None]) & 1
    return (2 * bits.reshape(-1)[:n].astype(dtype) - 1).reshape(shape)


NOISE: dict[str, Callable] = {
    "gaussian": jax.random.normal,
    "rademacher": _rademacher,
}
"""Tangent distributions with zero mean and identity covariance, by name."""


# jax's default threefry (partitionable, since jax 0.5) makes its bits ~1.5-2x slower on
# XLA:CPU, and the noise of every perturbed activation is a large share of a forward-gradient
# step (M/8/16 LG-FG-A with the classic one: 0.85x the step time with every draw classic,
# 0.78 -> 0.75x the released code's with only the tangents; BENCHMARKS §5.2). A step
# runs on one device, so nothing needs the partitionable layout: fgc's tangents use the
# classic generator. The draws differ from the default's, not their distribution.
_CLASSIC_THREEFRY = getattr(jax, "threefry_partitionable", None)


def sample_noise(kind: str, key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """Tangent noise of a registered kind (:data:`NOISE`)."""
    if kind not in NOISE:
        raise ValueError(f"unknown noise `{kind}` (known: {', '.join(NOISE)})")
    if _CLASSIC_THREEFRY is None:
        return NOISE[kind](key, shape, dtype)
    with _CLASSIC_THREEFRY(False):
        return NOISE[kind](key, shape, dtype)


# How the K tangents combine: registered aggregations (fgc.learning.aggregate), some of
# which act on the noise before the jvp (orthogonal) and not only on the estimates after it.
from fgc.learning.aggregate import AGGREGATIONS, aggregation  # noqa: E402,F401


def aggregate(kind: str, per_tangent: Array) -> Array:
    """The registered aggregation ``kind`` of per-tangent estimates (leading axis K)."""
    return aggregation(kind).combine(per_tangent)


def objective(losses: dict[str, Array]) -> Array:
    """``Σ_losses mean_batch Σ_replicas L``: the scalar every estimator targets (a float
    zero for a piece that computes no loss, such as a lone ``stopgrad`` between blocks)."""
    return sum((l.reshape(l.shape[0], -1).sum(axis=1).mean() for l in losses.values()),
               jnp.zeros((), jnp.result_type(float)))


def loss_means(losses: dict[str, Array]) -> dict[str, Array]:
    """Each loss's value averaged over the batch (its replicas share one value)."""
    return {k: v.reshape(v.shape[0], -1)[:, 0].mean() for k, v in losses.items()}


def take(into: PyTree, new: PyTree, nodes: frozenset[str]) -> PyTree:
    """``into`` with the gradients of ``nodes`` replaced by those in ``new``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, a, b: b if node_of(path) in nodes else a, into, new)


class Estimate(eqx.Module):
    """One step's update direction.

    Attributes:
      grads: estimated gradient of :func:`objective`, shaped like
        ``eqx.filter(net, trainable(net))``.
      losses: loss id → batch-mean loss value.
      state: node id → new buffers of the stateful layers (batch-norm running
        statistics), from the unperturbed forward pass.
    """

    grads: PyTree[Array]
    losses: dict[str, Array]
    state: dict = eqx.field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    grads: PyTree[Array]
    losses: dict[str, Array]
    state: dict
    boundary: dict = field(default_factory=dict)  # one piece's outputs for later pieces


# --- the protocol and the registry --------------------------------------------------------------

@dataclass(frozen=True)
class PassRule(abc.ABC):
    """One differentiation pass of a train step, providing some nodes' gradients.

    Subclasses are registered by name (:func:`register`) and built from the plan;
    ``run`` is pure and jit-able.

    Attributes:
      estimator: the estimator this pass implements.
      nodes: the parameter nodes whose gradients this pass provides (its own, plus
        the exact ones it was handed, see :meth:`exact_for`).
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # what it reads from the forward pass, for docs
    # Whether ``run`` takes ``piece=`` and ``given=`` (fgc.learning.blockwise): the pass
    # on one piece only, from the values earlier pieces handed on, returning that
    # piece's gradients, losses, state and ``boundary``.
    piecewise: ClassVar[bool] = False

    estimator: Estimator
    nodes: frozenset[str]

    @classmethod
    @abc.abstractmethod
    def build(cls, plan: Plan, estimator: Estimator, nodes: frozenset[str]) -> PassRule:
        """The pass for ``nodes`` (the parameter nodes of the groups using ``estimator``)."""

    def exact_for(self, plan: Plan, candidates: frozenset[str]) -> frozenset[str]:
        """Which of ``candidates`` (nodes wanting exact gradients) this pass gives exact
        gradients as a by-product; they are then not computed again."""
        return frozenset()

    def with_nodes(self, nodes: frozenset[str]) -> PassRule:
        import dataclasses
        return dataclasses.replace(self, nodes=nodes)

    @abc.abstractmethod
    def run(self, params: PyTree, static: PyTree, x: Array, labels: Array,
            key: PRNGKeyArray) -> PassResult:
        """Gradients (shaped like ``params``; only ``nodes``' are used), per-replica
        losses and new state."""

    def describe(self) -> str:
        return f"{self.name}: {len(self.nodes)} parameter nodes"


RULES: dict[str, type[PassRule]] = {}
"""Rule name → pass class (filled by :func:`register`)."""


def register(name: str) -> Callable[[type[PassRule]], type[PassRule]]:
    """Class decorator: the pass rule runs estimators whose :func:`rule_name` is ``name``."""

    def deco(cls: type[PassRule]) -> type[PassRule]:
        if name in RULES:
            raise ValueError(f"update rule `{name}` is already registered by {RULES[name].__name__}")
        cls.name = name
        RULES[name] = cls
        return cls

    return deco


def rule_name(est: Estimator) -> str:
    """The registered rule an estimator runs: ``backprop``, ``forward-weights``, ..."""
    if est.kind == "project":
        return f"project-{est.space}"
    return est.kind if est.kind != "forward" else f"forward-{est.perturb}"


def _rule_class(est: Estimator) -> type[PassRule]:
    from fgc.learning import feedback, passes, projection  # noqa: F401  (register the built-in rules)
    name = rule_name(est)
    if name not in RULES:
        raise LoweringError(f"no update rule is registered for estimator `{est.describe()}` "
                            f"(rule `{name}`; registered: {', '.join(sorted(RULES))})")
    return RULES[name]


# --- composing the passes of a plan ------------------------------------------------------------

@dataclass(frozen=True)
class UpdateRule:
    """Everything static about how one plan's parameters get their gradients.

    Build it once per plan (:meth:`build`); :meth:`estimate` is pure and jit-able.

    Attributes:
      passes: the differentiation passes, each providing some nodes' gradients.
      shared: head parameter node → replicas sharing it (gradient divided by it).
      estimator_of: parameter node → its estimator.
      pieces: how many pieces a step runs one after another (1: the whole network at
        once; :mod:`fgc.learning.blockwise`).
    """

    passes: tuple[PassRule, ...]
    shared: tuple[tuple[str, int], ...]
    estimator_of: tuple[tuple[str, Estimator], ...]
    pieces: int = 1

    @staticmethod
    def build(plan: Plan, net: Network | None = None, *, blockwise: bool = True) -> UpdateRule:
        """The passes of ``plan``: one per distinct estimator, in group order; nodes
        wanting exact gradients go to the first pass that gives them as a by-product,
        and the rest to one backprop pass. (``net`` is accepted for compatibility;
        everything comes from the plan.)

        ``blockwise``: run the plan's pieces (:attr:`fgc.plan.program.Plan.pieces`) one
        after another when it has several and every pass can (the estimate is the
        same; the peak memory is about one piece's); False runs the whole network at
        once."""
        g = plan.graph
        est = {}
        for nid, group in plan.assignment.items():
            est[nid] = EXACT if g.node(nid).role == "head" else plan.estimator_of(group)
        by_est: dict[Estimator, set[str]] = {}
        for nid, e in est.items():
            if rule_name(e) != "backprop":
                by_est.setdefault(e, set()).add(nid)
        passes = [_rule_class(e).build(plan, e, frozenset(nodes)) for e, nodes in by_est.items()]
        wanting = frozenset(n for n, e in est.items() if rule_name(e) == "backprop")
        for i, p in enumerate(passes):
            got = p.exact_for(plan, wanting)
            if got:
                passes[i] = p.with_nodes(p.nodes | got)
                wanting -= got
        if wanting or not passes:
            passes.append(_rule_class(EXACT).build(plan, EXACT, wanting))
        shared = tuple(sorted(plan.credit_map().shared.items()))
        pieces = len(plan.pieces) if blockwise and all(p.piecewise for p in passes) else 1
        return UpdateRule(tuple(passes), shared, tuple(sorted(est.items())), max(pieces, 1))

    def schedules(self) -> tuple[dict[str, str], ...]:
        """The XLA compiler options to compile a step of this rule with, the one needing
        the least memory kept (:func:`fgc.learning.blockwise.schedules`)."""
        from fgc.learning.blockwise import schedules
        return schedules(self.pieces)

    def describe(self) -> list[str]:
        """One line per pass, for logs and ``fgc train``'s header, and how a step runs
        them when it runs pieces one after another."""
        lines = [p.describe() for p in self.passes]
        if self.pieces > 1:
            lines.append(f"block-wise: {self.pieces} pieces, one after another")
        return lines

    def estimate(self, net: Network, x: Array, labels: Array, key: PRNGKeyArray) -> Estimate:
        """The update direction for one batch (pure; call it under ``jit``)."""
        params, static = eqx.partition(net, trainable(net))
        if self.pieces > 1:
            if len(net.pieces) != self.pieces:
                raise ValueError(f"the update rule runs {self.pieces} pieces, but the network "
                                 f"was lowered with {len(net.pieces)}: lower it from the same plan")
            from fgc.learning.blockwise import run_pieces
            grads, losses, state = run_pieces(self.passes, net.pieces, params, static, x,
                                              labels, key)
            return self._finish(grads, losses, state)
        grads, losses, state = None, None, None
        for i, p in enumerate(self.passes):
            out = p.run(params, static, x, labels, jax.random.fold_in(key, i))
            if losses is None:
                losses, state = out.losses, out.state
            grads = out.grads if grads is None else take(grads, out.grads, p.nodes)
        return self._finish(grads, losses, state)

    def _finish(self, grads, losses, state) -> Estimate:
        shared = dict(self.shared)
        grads = jax.tree_util.tree_map_with_path(
            lambda path, gr: gr / shared[node_of(path)] if node_of(path) in shared else gr, grads)
        return Estimate(grads, loss_means(losses), state)
