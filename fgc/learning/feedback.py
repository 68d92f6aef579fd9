"""Feedback alignment: update rules with fixed random backward weights.

Two :class:`~fgc.learning.estimators.PassRule` registrations, reading the plan's
``feedback`` (:mod:`fgc.plan.feedback`: which layers, which output points) and the
network's matrices (model buffers, ``Network.feedback``):

- ``feedback_alignment`` (FA, L-FA, LG-FA; Lillicrap et al. 2016): one reverse pass
  of the objective in which every FA layer's application is a ``jax.custom_vjp``
  whose input cotangent goes through the layer's fixed matrix ``B`` in place of
  ``Wᵀ``, while its own parameters get the usual ``x ⊗ δ`` gradient. FA, L-FA
  and LG-FA differ only in the plan's stop edges and losses, as BP, L-BP and LG-BP.
- ``direct_feedback_alignment`` (DFA; Nøkland 2016): the final loss's output error
  ``e = ∂J/∂logits`` (``[B, classes]``) reaches each output point through its own
  ``B`` (``[classes, C]``, divided over the point's positions as a pooled head would),
  as the cotangent of a reverse pass cut at every output point and at every DFA
  layer's input; each layer then gets its weight gradient from its local backward
  (through its norm and activation) only.

Heads learn by their exact gradient in both: they are not FA layers, and the reverse
pass gives them the objective's gradient (``exact_for``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp

from fgc.learning.blockwise import own_params
from fgc.learning.estimators import PassResult, PassRule, objective, register
from fgc.lowering.replicated import xent
from fgc.plan.feedback import DFA, FA

__all__ = ["DirectFeedbackAlignment", "FeedbackAlignment", "feedback_apply"]


@jax.custom_vjp
def feedback_apply(layer, b, x):
    """``layer(x)``, differentiated with ``b`` in place of the layer's weight for the
    input cotangent (the parameters' cotangent is the layer's own)."""
    return layer(x)


def _fa_fwd(layer, b, x):
    return layer(x), (layer, b, x)


def _fa_bwd(res, g):
    layer, b, x = res
    _, pull_params = jax.vjp(lambda l: l(x), layer)
    (d_layer,) = pull_params(g)
    _, pull_x = jax.vjp(eqx.tree_at(lambda l: l.weight, layer, b), x)
    (dx,) = pull_x(g)
    return d_layer, jnp.zeros_like(b), dx


feedback_apply.defvjp(_fa_fwd, _fa_bwd)


def _heads(plan, candidates):
    return frozenset(n for n in candidates if plan.graph.node(n).role == "head")


@register(FA)
@dataclass(frozen=True)
class FeedbackAlignment(PassRule):
    """jax.grad of the objective with every FA layer's backward through its ``B``."""

    needs = ("the network's feedback matrices",)
    piecewise = True
    layers: frozenset[str] = frozenset()

    @classmethod
    def build(cls, plan, estimator, nodes):
        layers = frozenset(f.node for f in plan.feedback if f.kind == FA and f.node in nodes)
        return cls(estimator, nodes, layers)

    def exact_for(self, plan, candidates):
        # Heads sit past every FA layer: the reverse pass gives them their exact gradient.
        return _heads(plan, candidates)

    def run(self, params, static, x, labels, key, piece=None, given=None):
        fb = {n: static.feedback[n].matrix for n in self.layers}
        own, rest = own_params(params, piece)

        def intercept(step, apply, args):
            if step.id in fb:
                return feedback_apply(apply, fb[step.id], args[0])
            return apply(*args)

        def f(p):
            net = eqx.combine(p, static) if rest is None else eqx.combine(p, rest, static)
            out = net.forward(x, labels, intercept=intercept, piece=piece, given=given)
            return objective(out.losses), (out.losses, out.state, out.boundary)

        grads, (losses, state, boundary) = jax.grad(f, has_aux=True)(own)
        return PassResult(grads, losses, state, boundary)

    def describe(self):
        return f"feedback alignment: {len(self.nodes)} parameter nodes, " \
               f"{len(self.layers)} with fixed random B"


@register(DFA)
@dataclass(frozen=True)
class DirectFeedbackAlignment(PassRule):
    """The final output error through each output point's ``B``, then local backwards."""

    needs = ("the network's feedback matrices", "the final logits", "output point values")
    points: tuple[str, ...] = ()
    layers: frozenset[str] = frozenset()
    final: str = ""

    @classmethod
    def build(cls, plan, estimator, nodes):
        needs = [f for f in plan.feedback if f.kind == DFA and set(f.layers) & nodes]
        final = next(l.id for l in plan.graph.losses.values() if l.final)
        return cls(estimator, nodes, tuple(f.node for f in needs),
                   frozenset(n for f in needs for n in f.layers), final)

    def exact_for(self, plan, candidates):
        return _heads(plan, candidates)

    def run(self, params, static, x, labels, key):
        cut = set(self.points)

        def intercept(step, apply, args):
            # No gradient leaves an output point downstream, or enters a DFA layer's input:
            # each layer learns from its own point's projected error only.
            args = [jax.lax.stop_gradient(a) if u in cut or step.id in self.layers else a
                    for u, a in zip(step.inputs, args)]
            return apply(*args)

        def f(p):
            out = eqx.combine(p, static).forward(x, labels, intercept=intercept,
                                                  keep_values=True)
            at = {pt: out.values[pt] for pt in self.points}
            return (objective(out.losses), at), (out.losses, out.state, out.logits[self.final])

        (j, at), pull, (losses, state, logits) = jax.vjp(f, params, has_aux=True)
        # The output error: the batch-mean final loss's gradient w.r.t. the final logits.
        e = jax.grad(lambda z: xent(z, labels).mean())(jax.lax.stop_gradient(logits))
        cot = {}
        for pt in self.points:
            v = at[pt]
            positions = math.prod(v.shape[1:-1])
            proj = e @ static.feedback[pt].matrix.astype(e.dtype) / positions  # [B, C]
            cot[pt] = jnp.broadcast_to(proj.reshape(v.shape[0], *(1,) * (v.ndim - 2), -1),
                                       v.shape).astype(v.dtype)
        (grads,) = pull((jnp.ones_like(j), cot))
        return PassResult(grads, losses, state)

    def describe(self):
        return f"direct feedback alignment: {len(self.nodes)} parameter nodes, " \
               f"{len(self.points)} output points with fixed random B"
