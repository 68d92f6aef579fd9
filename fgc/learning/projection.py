"""Gradient guesses ([F], Fournier et al. 2023): project a target onto a guess, in forward mode.

Every update of a ``project(...)`` estimator is ``ĝ = ⟨G, G̃⟩ / (‖G̃‖² + ε) · G̃``, with

- ``⟨G, G̃⟩`` a **directional derivative of the target along the guess**, ``jax.jvp`` of
  the target losses with the guess as the tangent at the block output (activity space)
  or at a layer's parameters (weight space): the target is never backpropagated through
  the network;
- ``G̃`` the guess: noise, or the gradient of the guess losses by a backward through the
  auxiliary head only (``local``, ``ntk``: a head re-drawn every batch, ``fixed``: a head
  drawn once and kept as a buffer), through the next block and its head (``above``), or
  through the network (``global``: the exact gradient, so the projection is backprop);
- in activity space, the weight gradient the block's **local backward** of ``ĝ`` (its own
  layers only, as fgc's activity perturbation does from a site).

Which block, losses and heads each unit reads is the plan's (:mod:`fgc.plan.guesses`).
The guess pass runs what lies downstream of where the guess is taken (in weight space,
the unit's layers too) in evaluation mode by default (``guess_bn = eval``, batch norm
reads its running statistics, as [F]'s code does); the target pass always trains.

Granularity says what one ``⟨G, G̃⟩`` covers: ``sample`` (per example: per block output,
or per example and parameter tensor), ``tensor`` (weights: one tensor over the batch),
``block``, ``global`` (every unit of the estimator together). A per-example product needs
the per-example directional derivative; where batch statistics mix the examples on the
target's path the plan says so (``Unit.coupled``) and one jvp per example is run.

Unlike [F]'s released code (REFERENCE §7), every parameter tensor gets its own projected
gradient (a bias's is never written into its weight's), and no space is offered that
would silently run another (its "sign" and "span" call the plain projection).

Per-example weight guesses are per-example parameter tangents: ``(∂y_n/∂W)·G̃_{n,W}`` at
the layer's output ``y``, one jvp per parameter tensor; layers that mix examples (batch
norm) are evaluated on the whole batch per example (B× that layer's cost).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import networkx as nx

from fgc.graph.ops import OPS
from fgc.learning.estimators import PassResult, PassRule, objective, register, sample_noise
from fgc.learning.passes import _at_primal
from fgc.lowering.modules import StatefulLayer, make_layer, trainable
from fgc.plan.guesses import Unit

__all__ = ["ActivityProjection", "WeightProjection", "per_example", "project"]

# Examples whose per-example jvps run at once where batch statistics couple them
# (``project(..., chunk = C)`` overrides it).
COUPLED_CHUNK = 16


def per_example(loss):
    """A loss ``[B]`` or ``[B, P, G]`` as one value per example (its replicas summed)."""
    return loss.reshape(loss.shape[0], -1).sum(axis=1)


def project(dot, sq, eps):
    """The projection's scale ``⟨G, G̃⟩ / (‖G̃‖² + ε)``."""
    return dot / (sq + eps)


@dataclass(frozen=True)
class HeadSpec:
    """A head op to re-draw for an ``ntk`` guess: how ``make_layer`` builds it."""

    node: str
    kind: str
    attrs: tuple
    in_shapes: tuple


def _sq(a, lead: int):
    """Sum of squares over every axis but the first ``lead``."""
    return jnp.sum(jnp.square(a), axis=tuple(range(lead, a.ndim)))


def _bcast(s, like):
    """A per-example scale ``[B]`` broadcastable against ``like`` ``[B, ...]``."""
    return s.reshape(s.shape + (1,) * (like.ndim - s.ndim))


def scaled_guess(s, guess, per_sample: bool):
    """ĝ at a block output: the guess ``[B, ...]`` times its projection scale ``s``, one
    per example (``per_sample``) or one for the whole batch."""
    return (_bcast(s, guess) if per_sample else s) * guess


@dataclass(frozen=True)
class _Projection(PassRule):
    units: tuple[Unit, ...] = ()
    down: tuple[tuple[str, frozenset], ...] = ()  # node -> the steps downstream of it
    heads: tuple[tuple[str, tuple[HeadSpec, ...]], ...] = ()  # loss -> its head ops
    batched: frozenset = frozenset()  # parameter nodes whose layer mixes examples

    @classmethod
    def build(cls, plan, estimator, nodes):
        g = plan.graph
        units = tuple(u for u in plan.units[estimator] if set(u.params) & nodes)
        steps = {n for n in g.g if g.node(n).role in ("op", "head")}
        watch = {u.output for u in units} | {n for u in units for n in u.params}
        down = tuple((n, frozenset(nx.descendants(g.g, n) & steps)) for n in sorted(watch))
        losses = sorted({l for u in units for l in u.aux_heads})
        heads = tuple((l, tuple(HeadSpec(n, g.node(n).kind, tuple(sorted(g.node(n).attrs.items())),
                                         tuple(tuple(g.node(i).shape) for i in g.inputs(n)))
                                for n in g.losses[l].head_nodes)) for l in losses)
        batched = frozenset(n for n in nodes if OPS[g.node(n).kind].mixes_examples)
        return cls(estimator, nodes, units, down, heads, batched)

    def exact_for(self, plan, candidates):
        # The heads learn from the same primal values, by a backward through them only.
        return frozenset(n for n in candidates if plan.graph.node(n).role == "head")

    def describe(self):
        notes = sorted({u.note for u in self.units if u.note})
        own = sum(len(u.params) for u in self.units)
        return f"projection: {own} parameter nodes in {len(self.units)} blocks " \
            f"(+{len(self.nodes) - own} heads exact), " \
            f"{self.estimator.describe()}" + (f" ({'; '.join(notes)})" if notes else "")

    # --- the forward-mode pieces --------------------------------------------------------
    def downstream(self, *nodes):
        """The steps downstream of any of ``nodes`` (what a perturbation there moves)."""
        d = dict(self.down)
        return frozenset().union(*(d[n] for n in nodes))

    @staticmethod
    def _rerun(net, x, labels, values, live, add, train, linearise):
        """The losses with ``add[n]`` added to node ``n``'s value: steps outside ``live``
        keep the primal ``values`` (constants), live ones are recomputed (linearised
        at the primal values when ``linearise``: only their tangents are new)."""
        def hook(step, apply, args):
            if step.id in live:
                y = apply(*args)
                if linearise:
                    y = _at_primal(values[step.id], y)
            else:
                y = values[step.id]
            return y + add[step.id] if step.id in add else y

        return net.forward(x, labels, intercept=hook, train=train).losses

    def _target(self, u: Unit, net, x, labels, values, nodes, linearise: bool = True):
        """``δ ↦`` per-example target losses with ``δ[n]`` added at ``nodes`` (what lies
        downstream linearised at ``values``, or recomputed with its primal)."""
        live = self.downstream(*nodes) | (set(nodes) - {u.output})

        def f(add):
            ls = self._rerun(net, x, labels, values, live, add, True, linearise)
            return sum(per_example(ls[l]) for l in u.target_losses)
        return f

    def dot(self, f, zeros, tangent, coupled: bool, per_sample: bool):
        """``⟨G, G̃⟩`` by jvp: per example ``[B]``, or over the batch (a scalar)."""
        batch = jax.tree_util.tree_leaves(tangent)[0].shape[0]
        if not per_sample:
            return jax.jvp(f, (zeros,), (tangent,))[1].sum() / batch
        if not coupled:  # example n's loss moves only with example n's tangent
            return jax.jvp(f, (zeros,), (tangent,))[1] / batch

        def one(e):  # batch statistics couple the examples: one jvp per example
            t = jax.tree_util.tree_map(lambda a: a * _bcast(e, a), tangent)
            return jax.jvp(f, (zeros,), (t,))[1].sum() / batch
        eye = jnp.eye(batch, dtype=jax.tree_util.tree_leaves(tangent)[0].dtype)
        return map_examples(one, (eye,), self.chunk)

    @property
    def chunk(self) -> int:
        return self.estimator.chunk or COUPLED_CHUNK

    def guess_net(self, net, u: Unit, key):
        """The network whose heads the guess of ``u`` reads: re-drawn (``ntk``), the fixed
        buffer (``fixed``), or the network itself."""
        if u.guess == "ntk":
            specs = [h for l, hs in self.heads if l in u.aux_heads for h in hs]
            dtype = jnp.result_type(float)
            layers = {h.node: make_layer(h.kind, dict(h.attrs), list(h.in_shapes), dtype=dtype,
                                         key=jax.random.fold_in(key, zlib.crc32(h.node.encode())))
                      for h in specs}
        elif u.guess == "fixed":
            layers = {n: net.fixed.layers[n] for l in u.aux_heads for n in net.loss_head(l).head}
        else:
            return net
        ids = sorted(layers)
        return eqx.tree_at(lambda m: [m.layers[i] for i in ids], net, [layers[i] for i in ids])

    def guess_grads(self, u: Unit, net, x, labels, values, nodes, key):
        """``∂/∂δ`` of the guess losses' objective with ``δ[n]`` added at ``nodes``: the
        guess at those nodes' outputs, by a backward through what lies after them."""
        gnet = self.guess_net(net, u, key)
        live = self.downstream(*nodes) | (set(nodes) - {u.output})
        train = self.estimator.guess_bn == "train"

        def h(add):
            ls = self._rerun(gnet, x, labels, values, live, add, train, False)
            return sum(per_example(ls[l]).mean() for l in u.guess_losses)
        return jax.grad(h)({n: jnp.zeros_like(values[n]) for n in nodes})

    # --- the backward: local to each block, and the heads' exact gradient -----------------
    def local_backward(self, params, static, x, labels, values, cot):
        """Gradients: the heads' exact ones, plus the block-local backward of ``cot``
        (node → cotangent of that node's output, within its unit's segment)."""
        seg_of = {n: i for i, u in enumerate(self.units) for n in u.segment}

        def f(p):
            m = eqx.combine(p, static)

            def seg(step, apply, args):
                i = seg_of.get(step.id)
                if i is None:
                    return jax.lax.stop_gradient(values[step.id])
                args = [a if seg_of.get(v) == i else jax.lax.stop_gradient(a)
                        for v, a in zip(step.inputs, args)]
                return _at_primal(values[step.id], apply(*args))

            def heads(step, apply, args):
                return apply(*args) if step.role == "head" else jax.lax.stop_gradient(values[step.id])

            vals = m.forward(x, None, intercept=seg, keep_values=True).values if cot else {}
            return {n: vals[n] for n in cot}, objective(m.forward(x, labels, intercept=heads).losses)

        out, pull = jax.vjp(f, params)
        (grads,) = pull((cot, jnp.ones_like(out[1])))
        return grads

    def run(self, params, static, x, labels, key):
        net = eqx.combine(params, static)
        out = net.forward(x, labels, keep_values=True)
        parts = self.parts(net, x, labels, key, out.values)
        grads = self.finish(params, static, x, labels, out.values, parts)
        return PassResult(grads, out.losses, out.state)


@register("project-activity")
@dataclass(frozen=True)
class ActivityProjection(_Projection):
    """The projection at each block's output, then the block's local backward of ``ĝ``."""

    needs = ("every node's value", "losses per example")

    def parts(self, net, x, labels, key, values):
        """Per unit: ``guess`` ``[B, *shape]``, ``dot`` and ``sq`` (per granularity), and
        ``hat`` (ĝ at the block output)."""
        est = self.estimator
        per_sample = est.granularity == "sample"
        out = [self.unit_product(u, net, x, labels, values, jax.random.fold_in(key, i))
               for i, u in enumerate(self.units)]
        if est.granularity == "global":
            s = project(sum(p["dot"] for p in out), sum(p["sq"] for p in out), est.eps)
            scales = [s] * len(out)
        else:
            scales = [project(p["dot"], p["sq"], est.eps) for p in out]
        for p, s in zip(out, scales):
            p["hat"] = scaled_guess(s, p["guess"], per_sample)
        return out

    def run(self, params, static, x, labels, key):
        if self.estimator.recompute:  # one block's working set at a time
            from fgc.learning.recompute import run_recomputing
            return run_recomputing(self, params, static, x, labels, key)
        return super().run(params, static, x, labels, key)

    def unit_product(self, u: Unit, net, x, labels, values, key, linearise: bool = True):
        """Unit ``u``'s ``guess`` (at its output), ``dot`` = ``⟨G, G̃⟩`` and ``sq`` =
        ``‖G̃‖²``, per example or over the batch as the granularity says."""
        per_sample = self.estimator.granularity == "sample"
        a = values[u.output]
        if u.guess == "random":
            guess = sample_noise(self.estimator.noise, key, a.shape, a.dtype)
        else:
            guess = self.guess_grads(u, net, x, labels, values, (u.output,), key)[u.output]
        f = self._target(u, net, x, labels, values, (u.output,), linearise)
        dot = self.dot(lambda d: f({u.output: d}), jnp.zeros_like(a), guess, u.coupled,
                       per_sample)
        sq = _sq(guess, 1) if per_sample else jnp.sum(jnp.square(guess))
        return {"guess": guess, "dot": dot, "sq": sq}

    def finish(self, params, static, x, labels, values, parts):
        cot = {u.output: p["hat"] for u, p in zip(self.units, parts)}
        return self.local_backward(params, static, x, labels, values, cot)


def _layer_fn(layer, train: bool):
    """``(p, f)``: the layer's trainable arrays and ``f(p, *args)`` applying it."""
    p, rest = eqx.partition(layer, trainable(layer))

    def f(p_, *args):
        lay = eqx.combine(p_, rest)
        return lay(*args, train=train) if isinstance(lay, StatefulLayer) else lay(*args)
    return p, f


def map_examples(fn, xs: tuple, chunk: int):
    """``fn`` over the leading (example) axis of ``xs``, ``chunk`` examples at a time.

    Where examples are coupled (batch statistics), each example's jvp or vjp carries the
    whole batch, so all B at once need B x its memory (35 GB for ResNet-18 at batch 128);
    a few at a time bound it, and the results are the same."""
    batch = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if chunk >= batch:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda a: fn(*a), xs, batch_size=chunk)


def per_example_vjp(layer, args, cot, train: bool, batched: bool, chunk: int = COUPLED_CHUNK):
    """``(∂y_n/∂p)ᵀ cot_n`` for every example n: per-example parameter gradients, each
    leaf with a leading batch axis."""
    p, f = _layer_fn(layer, train)
    if batched:  # the layer mixes examples: evaluate it on the batch, read example n
        def one(n, c):
            return jax.vjp(lambda q: f(q, *args)[n], p)[1](c)[0]
        return map_examples(one, (jnp.arange(cot.shape[0]), cot), chunk)

    def single(a, c):
        return jax.vjp(lambda q: f(q, *[ai[None] for ai in a])[0], p)[1](c)[0]
    return jax.vmap(single)(list(args), cot)


def per_example_jvp(layer, args, tangent, train: bool, batched: bool,
                    chunk: int = COUPLED_CHUNK):
    """``(∂y_n/∂p) tangent_n`` for every example n: the output tangent of per-example
    parameter tangents (each leaf with a leading batch axis)."""
    p, f = _layer_fn(layer, train)
    if batched:
        b = args[0].shape[0]

        def one(n, t):
            return jax.jvp(lambda q: f(q, *args)[n], (p,), (t,))[1]
        return map_examples(one, (jnp.arange(b), tangent), chunk)

    def single(a, t):
        return jax.jvp(lambda q: f(q, *[ai[None] for ai in a])[0], (p,), (t,))[1]
    return jax.vmap(single)(list(args), tangent)


def batch_jvp(layer, args, tangent, train: bool):
    """``(∂y/∂p) tangent`` over the batch: one parameter tangent for every example."""
    p, f = _layer_fn(layer, train)
    return jax.jvp(lambda q: f(q, *args), (p,), (tangent,))[1]


def batch_vjp(layer, args, cot, train: bool):
    p, f = _layer_fn(layer, train)
    return jax.vjp(lambda q: f(q, *args), p)[1](cot)[0]


def _only(tree, j: int):
    """``tree`` with every array leaf but the j-th zeroed (a one-tensor tangent)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [a if i == j else jnp.zeros_like(a) for i, a in enumerate(leaves)])


@register("project-weights")
@dataclass(frozen=True)
class WeightProjection(_Projection):
    """The projection per parameter tensor (per example, or over the batch), by jvps of
    the target along the guess as a parameter tangent."""

    needs = ("every node's value", "layer inputs", "losses per example")

    def parts(self, net, x, labels, key, values):
        """Per unit: node → ``guess`` (a layer-shaped pytree of per-tensor guesses, with
        a leading batch axis per sample), ``dot``, ``sq`` and ``hat`` (ĝ per tensor)."""
        est = self.estimator
        per_sample = est.granularity == "sample"
        steps = {s.id: s for s in net.steps}
        guess_train = est.guess_bn == "train"
        out = []
        for i, u in enumerate(self.units):
            k = jax.random.fold_in(key, i)
            args = {n: [values[v] for v in steps[n].inputs] for n in u.params}
            p = {n: _layer_fn(net.layers[n], True)[0] for n in u.params}
            b = x.shape[0]
            if u.guess == "random":
                keys = dict(zip(u.params, jax.random.split(k, len(u.params))))
                guess = {}
                for n in u.params:
                    leaves, treedef = jax.tree_util.tree_flatten(p[n])
                    ks = jax.random.split(keys[n], max(len(leaves), 1))
                    guess[n] = jax.tree_util.tree_unflatten(treedef, [
                        sample_noise(est.noise, kk, ((b,) if per_sample else ()) + a.shape,
                                     a.dtype) for kk, a in zip(ks, leaves)])
            else:
                gam = self.guess_grads(u, net, x, labels, values, u.params, k)
                guess = {n: (per_example_vjp(net.layers[n], args[n], gam[n], guess_train,
                                             n in self.batched, self.chunk) if per_sample else
                             batch_vjp(net.layers[n], args[n], gam[n], guess_train))
                         for n in u.params}
            zeros = {n: jnp.zeros_like(values[n]) for n in u.params}
            dot, sq = {}, {}
            if est.granularity in ("sample", "tensor"):
                for n in u.params:
                    f = self._target(u, net, x, labels, values, (n,))
                    leaves = jax.tree_util.tree_leaves(guess[n])
                    for j in range(len(leaves)):
                        g_j = _only(guess[n], j)
                        t = (per_example_jvp(net.layers[n], args[n], g_j, True,
                                             n in self.batched, self.chunk) if per_sample
                             else batch_jvp(net.layers[n], args[n], g_j, True))
                        dot[n, j] = self.dot(lambda d, f=f, n=n: f({n: d}), zeros[n], t,
                                             n in u.coupled_params, per_sample)
                        sq[n, j] = _sq(leaves[j], 1 if per_sample else 0)
            else:  # block, global: one jvp along every tensor of the unit
                f = self._target(u, net, x, labels, values, u.params)
                t = {n: batch_jvp(net.layers[n], args[n], guess[n], True) for n in u.params}
                dot["unit"] = self.dot(f, zeros, t, False, False)
                sq["unit"] = sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(guess))
            out.append({"guess": guess, "dot": dot, "sq": sq})
        if est.granularity == "global":
            s = project(sum(q["dot"]["unit"] for q in out), sum(q["sq"]["unit"] for q in out),
                        est.eps)
        for q in out:
            hat = {}
            for n, tree in q["guess"].items():
                leaves, treedef = jax.tree_util.tree_flatten(tree)
                new = []
                for j, a in enumerate(leaves):
                    if est.granularity in ("sample", "tensor"):
                        sc = project(q["dot"][n, j], q["sq"][n, j], est.eps)
                    else:
                        sc = s if est.granularity == "global" else \
                            project(q["dot"]["unit"], q["sq"]["unit"], est.eps)
                    new.append((_bcast(sc, a) * a).sum(axis=0) if per_sample else sc * a)
                hat[n] = jax.tree_util.tree_unflatten(treedef, new)
            q["hat"] = hat
        return out

    def finish(self, params, static, x, labels, values, parts):
        grads = self.local_backward(params, static, x, labels, values, {})
        hats = {n: h for q in parts for n, h in q["hat"].items()}
        ids = sorted(hats)
        return eqx.tree_at(lambda g: [g.layers[i] for i in ids], grads, [hats[i] for i in ids])
