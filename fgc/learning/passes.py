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
from fgc.learning.estimators import (PassResult, PassRule, node_of, objective, register,
                                     sample_noise)
from fgc.learning.tangents import (join, over_tangents, over_tangents_chunked, prepare_site,
                                   prepare_weight, scan_chunks, split_chunks)
from fgc.plan.credit import Credit, unit_credit, weight_credit


@register("backprop")
@dataclass(frozen=True)
class Backprop(PassRule):
    """Exact gradients: ``jax.grad`` of the objective through the plan's stop edges."""

    @classmethod
    def build(cls, plan, estimator, nodes):
        return cls(estimator, nodes)

    def run(self, params, static, x, labels, key):
        def f(p):
            out = eqx.combine(p, static).forward(x, labels)
            return objective(out.losses), (out.losses, out.state)

        grads, (losses, state) = jax.grad(f, has_aux=True)(params)
        return PassResult(grads, losses, state)

    def describe(self):
        return f"backprop: {len(self.nodes)} parameter nodes"


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

    def run(self, params, static, x, labels, key):
        owned = {r.node for r in self.slices}
        is_fwd = jax.tree_util.tree_map_with_path(lambda path, _: node_of(path) in owned, params)
        pf, po = eqx.partition(params, is_fwd)
        est = self.estimator
        agg = aggregation(est.aggregate)
        k_tan = est.tangents
        leaves, treedef = jax.tree_util.tree_flatten(pf)
        keys = jax.random.split(key, max(len(leaves), 1))
        v = jax.tree_util.tree_unflatten(treedef, [
            sample_noise(est.noise, k, (k_tan, *a.shape), a.dtype) for k, a in zip(keys, leaves)])
        rules = {r.node: r for r in self.slices}
        if agg.shapes_noise:  # e.g. orthogonal: the directions of each credit slice
            v = jax.tree_util.tree_map_with_path(
                lambda path, t: prepare_weight(agg, t, rules[node_of(path)].kind,
                                               rules[node_of(path)].credits,
                                               rules[node_of(path)].out_units), v)
        first, rest = split_chunks(v, est.chunk)

        def run(pf_, po_):
            out = eqx.combine(pf_, po_, static).forward(x, labels)
            return out.losses, (out.losses, out.state)

        # One reverse pass around the jvp gives every other parameter (heads, backprop
        # groups) its exact gradient from the same forward; the fused replicated loss
        # differentiates its primal output with the replicas' masks there too
        # (fgc.lowering.replicated._fused_jvp).
        def f(po_):
            def one(t):
                _, dl, aux = jax.jvp(lambda p: run(p, po_), (pf,), (t,), has_aux=True)
                return dl, aux

            dls, (losses, state) = over_tangents(one, first)
            return objective(losses), (dls, losses, state)

        _, pull, (dls, losses, state) = jax.vjp(f, po, has_aux=True)
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
        return PassResult(eqx.combine(g_fwd, g_other), losses, state)

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

    def run(self, params, static, x, labels, key):
        est = self.estimator
        agg = aggregation(est.aggregate)
        k_tan, batch = est.tangents, x.shape[0]
        keys = jax.random.split(key, max(len(self.sites), 1))
        dtype = jnp.result_type(float)
        z = {s.site: sample_noise(est.noise, k, (k_tan, batch, *s.shape), dtype)
             for k, s in zip(keys, self.sites)}
        if agg.shapes_noise:  # e.g. orthogonal: the directions of each credit partition
            z = {s.site: prepare_site(agg, z[s.site], s.shape, s.credits) for s in self.sites}
        zeros = {s.site: jnp.zeros((batch, *s.shape), dtype) for s in self.sites}
        masks_of = {s.site: s.mask for s in self.sites if s.mask}
        net = eqx.combine(params, static)

        def run(noise):
            out = net.forward(x, labels, noise=noise, keep_values=True)
            masks = {s: out.values[m] > 0 for s, m in masks_of.items()}
            return out.losses, (out.losses, masks, out.values, out.state)

        def one(t):
            _, dl, aux = jax.jvp(run, (zeros,), (t,), has_aux=True)
            return dl, aux

        # The forward pass with every site's tangent: d[k] for each loss replica.
        dls, (losses, masks, values, state) = over_tangents_chunked(one, z, est.chunk)
        cut = {s.site for s in self.sites}

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
            out = eqx.combine(params_, static).forward(x, labels, intercept=at_primal)
            return objective(out.losses), {s: out.site_inputs[s] for s in cut}

        (j, _), pull = jax.vjp(f, params)
        cot = {}
        for s in self.sites:
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
        return PassResult(grads, losses, state)

    def describe(self):
        return f"activity perturbation: {len(self.nodes)} parameter nodes, " \
               f"{len(self.sites)} sites" + _forward_words(self.estimator)
