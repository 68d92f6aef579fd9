"""Gradient estimators: how each parameter group turns the losses into an update.

Three pieces compose every algorithm of Ren et al. (the presets of
``grammar/algorithms.fg``) and leave room for the ones that are not built yet:

- **Exact** gradients (``backprop``): ``jax.grad`` of the objective through the
  plan's stop-gradient edges. BP, L-BP and LG-BP differ only in those edges.
- **Weight perturbation** (``forward(perturb = weights)``): a tangent ``v`` on
  every weight of the group (one draw per batch), one ``jax.jvp`` for the
  directional derivatives of every loss replica, and ``ĝ = credit(d) · v``.
- **Activity perturbation** (``forward(perturb = activity)``): per-example noise
  ``z`` at every ``perturb`` site, one ``jax.jvp`` with respect to the noise at
  zero, ``ĝ_u = credit(d) · z · relu-mask`` for each site's pre-noise value ``u``,
  and the weight gradient by backpropagating ``ĝ_u`` through that layer's own
  ops only (its norm and linear map), never across another site.

``credit`` (:mod:`fgc.plan.credit`) maps the per-replica derivatives ``d[n, p, g]`` of
a replicated local loss onto the units and weight slices each replica's
gradient actually flows through; for the global loss it is the per-example
derivative. ``K`` tangents are drawn at once (``jax.vmap`` over the tangent, the
primal computed once) and their estimates averaged (``aggregate = mean``).

The objective is ``J = Σ_losses mean_batch Σ_replicas L``: a backbone unit
receives the gradient of each loss it feeds once (each replica's derivative
flows through its own patch and group only, REFERENCE §3), and head parameters,
which every replica shares, are scaled back by the replica count, so heads
learn by the exact gradient of their single loss.

Where the design leaves room:
- guess sources other than random noise (a local auxiliary network's gradient,
  NTK guesses of Fournier et al.) replace :func:`sample_noise` for a group:
  the tangent enters the same jvp and the same credit and projection code;
- aggregations other than the mean (orthogonal projection on the K tangents)
  replace the ``mean`` over the tangent axis in :func:`_aggregate`;
- feedback-alignment rules are a fourth pass kind next to the three here.

Example:
    >>> rule = UpdateRule.build(plan, net)                    # doctest: +SKIP
    >>> est = rule.estimate(net, images, labels, key)         # doctest: +SKIP
    >>> est.grads          # pytree shaped like eqx.filter(net, eqx.is_array)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

from fgc.front.config import Estimator
from fgc.plan.credit import Credit, credits, unit_credit, weight_credit

if TYPE_CHECKING:
    from fgc.lowering.lower import Network
    from fgc.plan.program import Plan

__all__ = ["Estimate", "UpdateRule", "objective", "sample_noise"]

EXACT = Estimator("backprop")


def sample_noise(kind: str, key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """Tangent noise with zero mean and identity covariance."""
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    raise ValueError(f"unknown noise `{kind}` (gaussian or rademacher)")


def objective(losses: dict[str, Array]) -> Array:
    """``Σ_losses mean_batch Σ_replicas L``: the scalar every estimator targets."""
    return sum(l.reshape(l.shape[0], -1).sum(axis=1).mean() for l in losses.values())


def loss_means(losses: dict[str, Array]) -> dict[str, Array]:
    """Each loss's value averaged over the batch (its replicas share one value)."""
    return {k: v.reshape(v.shape[0], -1)[:, 0].mean() for k, v in losses.items()}


class Estimate(eqx.Module):
    """One step's update direction.

    Attributes:
      grads: estimated gradient of :func:`objective`, shaped like
        ``eqx.filter(net, eqx.is_array)``.
      losses: loss id → batch-mean loss value.
    """

    grads: PyTree[Array]
    losses: dict[str, Array]


@dataclass(frozen=True)
class SiteRule:
    """An activity-perturbation site: its per-example shape, the credit of every loss
    it reaches, and the ReLU whose mask applies to it (None: no mask)."""

    site: str
    shape: tuple[int, ...]
    credits: tuple[Credit, ...]
    mask: str | None
    owners: frozenset[str]  # parameter nodes whose local backward ends at this site


@dataclass(frozen=True)
class WeightRule:
    """A weight-perturbed parameter node: its op kind, output units and credits."""

    node: str
    kind: str
    out_units: int
    credits: tuple[Credit, ...]


@dataclass(frozen=True)
class Pass:
    """One differentiation pass of a train step.

    ``kind`` is ``exact``, ``weights`` or ``activity``; ``nodes`` are the parameter
    nodes whose gradients this pass provides.
    """

    kind: str
    estimator: Estimator
    nodes: frozenset[str]
    sites: tuple[SiteRule, ...] = ()
    weights: tuple[WeightRule, ...] = ()


@dataclass(frozen=True)
class UpdateRule:
    """Everything static about how one plan's parameters get their gradients.

    Build it once per plan (:meth:`build`); :meth:`estimate` is pure and jit-able.

    Attributes:
      passes: the differentiation passes, each providing some nodes' gradients.
      head_loss: head parameter node → its loss id (for the replica rescaling).
      estimator_of: parameter node → its estimator.
    """

    passes: tuple[Pass, ...]
    head_loss: tuple[tuple[str, str], ...]
    estimator_of: tuple[tuple[str, Estimator], ...]

    @staticmethod
    def build(plan: Plan, net: Network) -> UpdateRule:
        g = plan.graph
        est = {}
        for nid, group in plan.assignment.items():
            e = plan.estimator_of(group)
            est[nid] = EXACT if g.node(nid).role == "head" else e
        heads = tuple((nid, g.node(nid).loss) for nid in plan.assignment
                      if g.node(nid).role == "head")
        forward = {}  # estimator -> nodes
        for nid, e in est.items():
            if e.kind == "forward":
                forward.setdefault(e, set()).add(nid)
        exact_backbone = {n for n, e in est.items() if e.kind != "forward"
                          and g.node(n).role != "head"}
        passes = []
        for e, nodes in forward.items():
            if e.perturb == "weights":
                rules = tuple(_weight_rule(g, n, e.credit) for n in sorted(nodes))
                passes.append(Pass("weights", e, frozenset(nodes), weights=rules))
            else:
                sites = tuple(r for r in (_site_rule(g, net, s, e.credit) for s in net.sites)
                              if r.owners & nodes)
                passes.append(Pass("activity", e, frozenset(nodes), sites=sites))
        heads_set = frozenset(n for n, _ in heads)
        if not passes:
            passes.append(Pass("exact", EXACT, frozenset(est)))
        elif passes[0].kind == "weights":
            # The outer reverse pass of a weight-perturbation pass runs through the
            # unperturbed network: it gives heads and backprop groups their exact
            # gradients at no extra cost.
            p = passes[0]
            passes[0] = Pass(p.kind, p.estimator, p.nodes | heads_set | exact_backbone,
                             p.sites, p.weights)
        else:
            p = passes[0]
            passes[0] = Pass(p.kind, p.estimator, p.nodes | heads_set, p.sites, p.weights)
            if exact_backbone:  # activity passes cut the backward at every site
                passes.append(Pass("exact", EXACT, frozenset(exact_backbone)))
        return UpdateRule(tuple(passes), heads, tuple(sorted(est.items())))

    def describe(self) -> list[str]:
        """One line per pass, for logs and ``fgc train``'s header."""
        out = []
        for p in self.passes:
            what = {"exact": "backprop", "weights": "weight perturbation",
                    "activity": "activity perturbation"}[p.kind]
            extra = f", {len(p.sites)} sites" if p.sites else ""
            if p.kind != "exact":
                extra += f", {p.estimator.noise}, K={p.estimator.tangents}"
                if p.estimator.credit != "exact":
                    extra += f", credit={p.estimator.credit}"
            out.append(f"{what}: {len(p.nodes)} parameter nodes{extra}")
        return out

    # --- running -------------------------------------------------------------------------
    def estimate(self, net: Network, x: Array, labels: Array, key: PRNGKeyArray) -> Estimate:
        """The update direction for one batch (pure; call it under ``jit``)."""
        params, static = eqx.partition(net, eqx.is_array)
        grads, losses = None, None
        for i, p in enumerate(self.passes):
            k = jax.random.fold_in(key, i)
            if p.kind == "exact":
                got, l = _exact(params, static, x, labels)
            elif p.kind == "weights":
                got, l = _weights(params, static, x, labels, k, p)
            else:
                got, l = _activity(params, static, x, labels, k, p)
            losses = l if losses is None else losses
            grads = got if grads is None else _take(grads, got, p.nodes)
        grads = _scale_heads(grads, dict(self.head_loss), losses)
        return Estimate(grads, loss_means(losses))


def _node_of(path) -> str:
    return path[1].key  # (.layers, [node id], .param)


def _take(into: PyTree, new: PyTree, nodes: frozenset[str]) -> PyTree:
    """``into`` with the gradients of ``nodes`` replaced by those in ``new``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, a, b: b if _node_of(path) in nodes else a, into, new)


def _scale_heads(grads: PyTree, head_loss: dict[str, str], losses: dict[str, Array]) -> PyTree:
    """Head parameters are shared by their loss's replicas: divide their summed
    gradient by the replica count, giving the exact gradient of the single loss."""
    reps = {lid: math.prod(l.shape[1:]) for lid, l in losses.items()}
    return jax.tree_util.tree_map_with_path(
        lambda path, gr: gr / reps[head_loss[_node_of(path)]]
        if _node_of(path) in head_loss and reps[head_loss[_node_of(path)]] > 1 else gr, grads)


# --- the three passes --------------------------------------------------------------------

def _exact(params, static, x, labels):
    def f(p):
        losses = eqx.combine(p, static).forward(x, labels).losses
        return objective(losses), losses
    grads, losses = jax.grad(f, has_aux=True)(params)
    return grads, losses


def _weights(params, static, x, labels, key, p: Pass):
    """Weight perturbation: the jvp with respect to the group's weights, inside a
    reverse pass over every other parameter (heads, backprop groups)."""
    owned = {r.node for r in p.weights}
    is_fwd = jax.tree_util.tree_map_with_path(lambda path, _: _node_of(path) in owned, params)
    pf, po = eqx.partition(params, is_fwd)
    k_tan = p.estimator.tangents
    leaves, treedef = jax.tree_util.tree_flatten(pf)
    keys = jax.random.split(key, max(len(leaves), 1))
    v = jax.tree_util.tree_unflatten(treedef, [
        sample_noise(p.estimator.noise, k, (k_tan, *a.shape), a.dtype)
        for k, a in zip(keys, leaves)])

    def f(po_):
        def run(pf_):
            losses = eqx.combine(pf_, po_, static).forward(x, labels).losses
            return losses, losses

        def one(t):
            _, dl, losses = jax.jvp(run, (pf,), (t,), has_aux=True)
            return dl, losses

        dls, losses = _over_tangents(one, v)
        return objective(losses), (dls, losses)

    _, pull, (dls, losses) = jax.vjp(f, po, has_aux=True)
    (g_other,) = pull(jnp.ones((), jnp.result_type(float)))
    batch = x.shape[0]
    rules = {r.node: r for r in p.weights}

    def estimate(path, tangent):
        r = rules[_node_of(path)]
        # c[k, unit]: the credited derivative of each tangent, batch-mean.
        c = sum(jax.vmap(lambda d, cr=cr: weight_credit(d, cr, r.kind, r.out_units))(dls[cr.loss])
                for cr in r.credits) / batch if r.credits else jnp.zeros((k_tan, r.out_units))
        return _aggregate(_expand_units(c, tangent.shape[1:], r.kind) * tangent)

    g_fwd = jax.tree_util.tree_map_with_path(estimate, v)
    return eqx.combine(g_fwd, g_other), losses


def _activity(params, static, x, labels, key, p: Pass):
    """Activity perturbation: the jvp with respect to noise at the sites, inside a
    reverse pass that stops at every site (each layer's local backward)."""
    k_tan, batch = p.estimator.tangents, x.shape[0]
    keys = jax.random.split(key, max(len(p.sites), 1))
    dtype = jnp.result_type(float)
    z = {s.site: sample_noise(p.estimator.noise, k, (k_tan, batch, *s.shape), dtype)
         for k, s in zip(keys, p.sites)}
    zeros = {s.site: jnp.zeros((batch, *s.shape), dtype) for s in p.sites}
    masks_of = {s.site: s.mask for s in p.sites if s.mask}

    net = eqx.combine(params, static)

    def run(noise):
        out = net.forward(x, labels, noise=noise, keep_values=True)
        masks = {s: out.values[m] > 0 for s, m in masks_of.items()}
        return out.losses, (out.losses, masks, out.values)

    def one(t):
        _, dl, aux = jax.jvp(run, (zeros,), (t,), has_aux=True)
        return dl, aux

    # The forward pass with every site's tangent: d[k] for each loss replica.
    dls, (losses, masks, values) = _over_tangents(one, z)

    # The local backward: the same forward with gradients cut at every site, so
    # each site's cotangent reaches only the layers between it and the sites
    # before it; the losses' own gradient then reaches only the heads. It is
    # differentiated at the jvp's primal values instead of recomputing them, so
    # no layer's forward runs twice (BENCHMARKS.md, "LG-FG-A vs BP").
    def f(params_):
        out = eqx.combine(params_, static).forward(x, labels, cut_sites=True, primals=values)
        return objective(out.losses), {s.site: out.site_inputs[s.site] for s in p.sites}

    (j, _), pull = jax.vjp(f, params)
    cot = {}
    for s in p.sites:
        if not s.credits:
            cot[s.site] = jnp.zeros((batch, *s.shape), dtype)
            continue
        c = sum(jax.vmap(lambda d, cr=cr: unit_credit(d, cr, s.shape))(dls[cr.loss])
                for cr in s.credits)  # [K, B|1, *unit-broadcast]
        g = c * z[s.site] / batch
        if s.site in masks:
            g = g * masks[s.site]
        cot[s.site] = _aggregate(g)
    (grads,) = pull((jnp.ones_like(j), cot))
    return grads, losses


def _over_tangents(one, tangents):
    """``one`` on each tangent (leading axis K): per-tangent outputs stacked, the
    primal-only auxiliary output once. One tangent runs without ``vmap``: a batch
    axis of size 1 costs XLA:CPU layout copies around every matmul."""
    if jax.tree_util.tree_leaves(tangents)[0].shape[0] == 1:
        out, aux = one(jax.tree_util.tree_map(lambda t: t[0], tangents))
        return jax.tree_util.tree_map(lambda a: a[None], out), aux
    return jax.vmap(one, out_axes=(0, None))(tangents)


def _aggregate(per_tangent: Array) -> Array:
    """Combines the K tangents' estimates (axis 0): their mean."""
    return per_tangent.mean(axis=0)


def _expand_units(c: Array, shape: tuple[int, ...], kind: str) -> Array:
    """Broadcasts per-output-unit credit ``[K, units]`` to a parameter ``[K, *shape]``.

    Every layer keeps its output units on the last axis; a group-linear layer's
    are ``[groups, ..., out / groups]``.
    """
    k = c.shape[0]
    if kind == "group_linear":
        g = shape[0]
        c = c.reshape(k, g, 1, -1) if len(shape) == 3 else c.reshape(k, g, -1)
        return c
    return c.reshape((k,) + (1,) * (len(shape) - 1) + (shape[-1],))


# --- static analysis ------------------------------------------------------------------------

def _weight_rule(g, nid: str, credit: str = "exact") -> WeightRule:
    d = g.node(nid)
    out = d.shape[0] if d.kind == "token_mix" else d.shape[-1]
    return WeightRule(nid, d.kind, int(out), tuple(credits(g, nid, credit)))


def _site_rule(g, net: Network, site: str, credit: str = "exact") -> SiteRule:
    return SiteRule(site, tuple(g.node(site).shape), tuple(credits(g, site, credit)),
                    _relu_after(net, site), frozenset(_segment_owners(g, site)))


def _relu_after(net: Network, site: str) -> str | None:
    """The ReLU every path from ``site`` passes through first, directly or after a
    residual ``add``: its post-activation mask is known to zero the site's true
    gradient, so applying it to the estimate removes variance and no signal."""
    consumers: dict[str, list] = {}
    for s in net.steps:
        for u in s.inputs:
            consumers.setdefault(u, []).append(s)
    node = site
    for _ in range(2):
        nxt = consumers.get(node, [])
        if len(nxt) != 1:
            return None
        if nxt[0].kind == "relu":
            return nxt[0].id
        if nxt[0].kind != "add":
            return None
        node = nxt[0].id
    return None


def _segment_owners(g, site: str) -> set[str]:
    """Parameter nodes upstream of ``site`` reached without crossing another site or a
    stop-gradient edge: the layers whose weights learn from this site's estimate."""
    owners, seen, todo = set(), {site}, [site]
    while todo:
        v = todo.pop()
        for u in g.g.predecessors(v):
            if u in seen or g.edge(u, v).stop_gradient:
                continue
            seen.add(u)
            du = g.node(u)
            if du.role != "op" or du.kind == "perturb":
                continue
            if du.params:
                owners.add(u)
            todo.append(u)
    return owners
