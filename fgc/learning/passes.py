"""The built-in update rules: backprop, weight perturbation, activity perturbation.

Each is a :class:`~fgc.learning.estimators.PassRule` registered by name. They read
the plan's credit map (:mod:`fgc.plan.credit`) for which loss replicas a weight
slice or a site's unit answers to, and derive nothing from the graph themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp

from fgc.learning.aggregate import aggregation
from fgc.learning.blockwise import hold, own_params
from fgc.learning.estimators import (PassResult, PassRule, node_of, objective, register,
                                     sample_noise)
from fgc.learning.tangents import (join, over_tangents, over_tangents_chunked, prepare_site,
                                   prepare_weight, scan_chunks, split_chunks)
from fgc.plan.credit import Credit, unit_credit, weight_credit


@register("backprop")
@dataclass(frozen=True)
class Backprop(PassRule):
    """Exact gradients: ``jax.grad`` of the objective through the plan's stop edges."""

    piecewise = True

    @classmethod
    def build(cls, plan, estimator, nodes):
        return cls(estimator, nodes)

    def run(self, params, static, x, labels, key, piece=None, given=None):
        own, rest = own_params(params, piece)

        def f(p):
            out = _combine(p, rest, static).forward(x, labels, piece=piece, given=given)
            return objective(out.losses), (out.losses, out.state, out.boundary)

        grads, (losses, state, boundary) = jax.grad(f, has_aux=True)(own)
        return PassResult(grads, losses, state, boundary)

    def describe(self):
        return f"backprop: {len(self.nodes)} parameter nodes"


def _combine(own, rest, static):
    """The network from a piece's own parameters, the others' and the static part."""
    return eqx.combine(own, static) if rest is None else eqx.combine(own, rest, static)


def _forward_words(est) -> str:
    words = f", {est.noise}, K={est.tangents}"
    if est.credit != "exact":
        words += f", credit={est.credit}"
    if est.aggregate != "mean":
        words += f", aggregate={est.aggregate}"
    if est.chunk is not None:
        words += f", chunk={est.chunk}"
    return words


# --- weight perturbation ------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightSlice:
    """A weight-perturbed parameter node: its op kind, output units and credits."""

    node: str
    kind: str
    out_units: int
    credits: tuple[Credit, ...]


def _expand_units(c, shape: tuple[int, ...], kind: str):
    """Broadcasts per-output-unit credit ``[K, units]`` to a parameter ``[K, *shape]``.

    Every layer keeps its output units on the last axis; a group-linear layer's
    are ``[groups, ..., out / groups]``.
    """
    k = c.shape[0]
    if kind == "group_linear":
        g = shape[0]
        return c.reshape(k, g, 1, -1) if len(shape) == 3 else c.reshape(k, g, -1)
    return c.reshape((k,) + (1,) * (len(shape) - 1) + (shape[-1],))


@register("forward-weights")
@dataclass(frozen=True)
class WeightPerturbation(PassRule):
    """A tangent on every weight of the group (one draw per batch), the jvp of every
    loss replica inside a reverse pass over every other parameter; ``ĝ = credit(d)·v``."""

    needs = ("losses per replica",)
    piecewise = True
    slices: tuple[WeightSlice, ...] = ()

    @classmethod
    def build(cls, plan, estimator, nodes):
        cmap = plan.credit_map(estimator.credit)
        g = plan.graph
        slices = []
        for n in sorted(nodes):
            d = g.node(n)
            out = d.shape[0] if d.kind == "token_mix" else d.shape[-1]
            slices.append(WeightSlice(n, d.kind, int(out), cmap.weights.get(n, ())))
        return cls(estimator, nodes, tuple(slices))

    def exact_for(self, plan, candidates):
        # The reverse pass around its jvp runs through the unperturbed network: every
        # other parameter's exact gradient comes at no extra forward.
        return candidates

    def run(self, params, static, x, labels, key, piece=None, given=None):
        owned = {r.node for r in self.slices}
        # Every weight leaf's key is its index among all the rule's leaves, so a piece
        # draws the same tangents for its weights as the whole network does.
        everyone = eqx.filter(params, jax.tree_util.tree_map_with_path(
            lambda path, _: node_of(path) in owned, params))
        paths = [jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_flatten_with_path(everyone)[0]]
        keys = jax.random.split(key, max(len(paths), 1))
        key_of = dict(zip(paths, keys))
        mine, others = own_params(params, piece)
        is_fwd = jax.tree_util.tree_map_with_path(lambda path, _: node_of(path) in owned, mine)
        pf, po = eqx.partition(mine, is_fwd)
        est = self.estimator
        agg = aggregation(est.aggregate)
        k_tan = est.tangents
        v = jax.tree_util.tree_map_with_path(
            lambda path, a: sample_noise(est.noise, key_of[jax.tree_util.keystr(path)],
                                         (k_tan, *a.shape), a.dtype), pf)
        rules = {r.node: r for r in self.slices}
        if agg.shapes_noise:  # e.g. orthogonal: the directions of each credit slice
            v = jax.tree_util.tree_map_with_path(
                lambda path, t: prepare_weight(agg, t, rules[node_of(path)].kind,
                                               rules[node_of(path)].credits,
                                               rules[node_of(path)].out_units), v)
        perturbed = bool(jax.tree_util.tree_leaves(v))  # a piece of heads alone has none
        first, rest = split_chunks(v, est.chunk) if perturbed else (v, None)

        def run(pf_, po_):
            out = _combine(eqx.combine(pf_, po_), others, static).forward(
                x, labels, piece=piece, given=given)
            return out.losses, (out.losses, out.state, out.boundary)

        # One reverse pass around the jvp gives every other parameter (heads, backprop
        # groups) its exact gradient from the same forward; the fused replicated loss
        # differentiates its primal output with the replicas' masks there too
        # (fgc.lowering.replicated._fused_jvp).
        def f(po_):
            if not perturbed:
                _, (losses, state, boundary) = run(pf, po_)
                return objective(losses), ({}, losses, state, boundary)

            def one(t):
                _, dl, aux = jax.jvp(lambda p: run(p, po_), (pf,), (t,), has_aux=True)
                return dl, aux

            dls, (losses, state, boundary) = over_tangents(one, first)
            return objective(losses), (dls, losses, state, boundary)

        _, pull, (dls, losses, state, boundary) = jax.vjp(f, po, has_aux=True)
        (g_other,) = pull(jnp.ones((), jnp.result_type(float)))
        if rest is not None:
            # Further chunks need only their directional derivatives: plain jvps, outside
            # the reverse pass (which the first chunk's forward already serves).
            def one_more(t):
                _, dl, aux = jax.jvp(lambda p: run(p, po), (pf,), (t,), has_aux=True)
                return dl, aux

            dls = join(dls, scan_chunks(one_more, rest))
        batch = x.shape[0]

        def estimate(path, tangent):
            r = rules[node_of(path)]
            # c[k, unit]: the credited derivative of each tangent, batch-mean.
            c = sum(jax.vmap(lambda d, cr=cr: weight_credit(d, cr, r.kind, r.out_units))(
                dls[cr.loss]) for cr in r.credits) / batch if r.credits \
                else jnp.zeros((k_tan, r.out_units), tangent.dtype)
            return agg.combine(_expand_units(c, tangent.shape[1:], r.kind) * tangent)

        g_fwd = jax.tree_util.tree_map_with_path(estimate, v)
        return PassResult(eqx.combine(g_fwd, g_other), losses, state, boundary)

    def describe(self):
        return f"weight perturbation: {len(self.nodes)} parameter nodes" + \
            _forward_words(self.estimator)


# --- activity perturbation ----------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """An activity-perturbation site: its per-example shape, the credit of every loss
    it reaches, and the ReLU whose mask applies to it (None: no mask)."""

    site: str
    shape: tuple[int, ...]
    credits: tuple[Credit, ...]
    mask: str | None


@jax.custom_jvp
def _at_primal(primal, live):
    """``primal``'s value with ``live``'s derivative: differentiating through it
    linearises ``live`` at the known value ``primal`` (which must equal it), so
    ``live``'s own forward computation is dead code that jit removes."""
    return primal


@_at_primal.defjvp
def _at_primal_jvp(primals, tangents):
    return primals[0], tangents[1]


@register("forward-activity")
@dataclass(frozen=True)
class ActivityPerturbation(PassRule):
    """Noise at every site the group owns, one jvp with respect to it at zero, and each
    layer's local backward from its site's credited estimate."""

    needs = ("every node's value", "site inputs", "losses per replica")
    piecewise = True
    sites: tuple[Site, ...] = ()

    @classmethod
    def build(cls, plan, estimator, nodes):
        cmap = plan.credit_map(estimator.credit)
        g = plan.graph
        sites = tuple(Site(s, tuple(g.node(s).shape), cmap.sites[s], cmap.masks[s])
                      for s in cmap.sites if cmap.owners[s] & nodes)
        return cls(estimator, nodes, sites)

    def exact_for(self, plan, candidates):
        # The local backward cuts every site, so only heads (past the last site) get
        # their exact gradient from it.
        return frozenset(n for n in candidates if plan.graph.node(n).role == "head")

    def run(self, params, static, x, labels, key, piece=None, given=None):
        est = self.estimator
        agg = aggregation(est.aggregate)
        k_tan, batch = est.tangents, x.shape[0]
        # Site i draws from the i-th of all the rule's keys, in a piece as in the whole.
        keys = jax.random.split(key, max(len(self.sites), 1))
        chosen = [(k, s) for k, s in zip(keys, self.sites)
                  if piece is None or s.site in piece.nodes]
        sites = tuple(s for _, s in chosen)
        dtype = jnp.result_type(float)
        z = {s.site: sample_noise(est.noise, k, (k_tan, batch, *s.shape), dtype)
             for k, s in chosen}
        if agg.shapes_noise:  # e.g. orthogonal: the directions of each credit partition
            z = {s.site: prepare_site(agg, z[s.site], s.shape, s.credits) for s in sites}
        if piece is None:
            zeros = {s.site: jnp.zeros((batch, *s.shape), dtype) for s in sites}
        else:
            # One piece of several: its noise stored once (not re-derived by every reader
            # from the sampler's intermediates), and a zero primal of its own, where XLA
            # would share one constant zeros buffer across every piece, alive throughout.
            z = hold(z)
            zeros = {site: 0 * t[0] for site, t in z.items()}
        masks_of = {s.site: s.mask for s in sites if s.mask}
        net = eqx.combine(params, static)
        own, rest = own_params(params, piece)

        def run(noise):
            out = net.forward(x, labels, noise=noise, keep_values=True, piece=piece, given=given)
            masks = {s: out.values[m] > 0 for s, m in masks_of.items()}
            return out.losses, (out.losses, masks, out.values, out.state, out.boundary)

        def one(t):
            _, dl, aux = jax.jvp(run, (zeros,), (t,), has_aux=True)
            return dl, aux

        # The forward pass with every site's tangent: d[k] for each loss replica. (A piece
        # without sites, such as a readout head on its own, has no tangents to carry.)
        if z:
            dls, (losses, masks, values, state, boundary) = over_tangents_chunked(one, z,
                                                                                est.chunk)
        else:
            dls, (losses, masks, values, state, boundary) = run(zeros)
        cut = {s.site for s in sites}

        # The local backward: the same forward with gradients cut at every site, so
        # each site's cotangent reaches only the layers between it and the sites
        # before it; the losses' own gradient then reaches only the heads. It is
        # differentiated at the jvp's primal values instead of recomputing them, so
        # no layer's forward runs twice (BENCHMARKS.md, "LG-FG-A vs BP").
        def at_primal(step, apply, args):
            if step.id in cut:
                args = [jax.lax.stop_gradient(args[0])]
            return _at_primal(values[step.id], apply(*args))

        def f(params_):
            out = _combine(params_, rest, static).forward(x, labels, intercept=at_primal,
                                                          piece=piece, given=given)
            return objective(out.losses), {s: out.site_inputs[s] for s in cut}

        (j, _), pull = jax.vjp(f, own)
        cot = {}
        for s in sites:
            if not s.credits:  # a dead site: its noise reaches no loss
                cot[s.site] = jnp.zeros((batch, *s.shape), dtype)
                continue
            c = sum(jax.vmap(lambda d, cr=cr: unit_credit(d, cr, s.shape))(dls[cr.loss])
                    for cr in s.credits)  # [K, B|1, *unit-broadcast]
            g = c * z[s.site] / batch
            if s.site in masks:
                g = g * masks[s.site][None]  # the mask is shared by the K tangents
            cot[s.site] = agg.combine(g)
        (grads,) = pull((jnp.ones_like(j), cot))
        return PassResult(grads, losses, state, boundary)

    def describe(self):
        return f"activity perturbation: {len(self.nodes)} parameter nodes, " \
               f"{len(self.sites)} sites" + _forward_words(self.estimator)
