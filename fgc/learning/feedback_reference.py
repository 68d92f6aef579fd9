"""Ground truth for the feedback-alignment rules, written independently of them.

It shares no code with :mod:`fgc.learning.feedback` (no ``custom_vjp``, no intercept
hook, no cut reverse pass): it reads only the plan's decisions (which layers, which
output points) and the network's own matrices, and computes the updates another way.

- FA: its own interpreter over the layers in which each FA layer's output is written
  ``stop_gradient(W x − B x) + B x`` with a copy of the layer holding ``B``; the
  objective's ``jax.grad`` with respect to that copy is FA's update of the layer
  (``x ⊗ δ`` with ``δ`` brought back through the ``B`` of every FA layer above).
- DFA: one forward pass for every value; the output error written out by hand,
  ``(softmax(z) − onehot(y)) / N``; then, point by point, ``jax.vjp`` of the small
  function from the parameters of the layers ending there (and of the norms between
  them and the point) to the point's value, every other value held at its forward
  value, against ``e B / positions``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from fgc.learning.reference import _loss_of
from fgc.lowering.modules import StatefulLayer, trainable
from fgc.training.data import normalize

__all__ = ["CHECKS", "feedback_reference_grads"]

CHECKS = {
    "feedback_alignment": "allclose vs a surrogate FA backward (stop_gradient(Wx−Bx)+Bx)",
    "direct_feedback_alignment": "allclose vs a naive per-layer DFA backward (e by hand)",
}
"""Rule name → the check :func:`fgc.learning.verify.verify_plan` reports it ran."""


def _input(net, x):
    return normalize(x, net.input_mean, net.input_std) if net.input_mean is not None else x


def _apply(layer, args):
    return layer(*args, train=True) if isinstance(layer, StatefulLayer) else layer(*args)


def _fa_grads(plan, net, x, labels) -> dict:
    fa = [f.node for f in plan.feedback if f.kind == "feedback_alignment"]
    params, static = eqx.partition(net, trainable(net))
    copies = {n: eqx.tree_at(lambda l: l.weight, net.layers[n], net.feedback[n].matrix)
              for n in fa}
    copies, copy_static = eqx.partition(copies, eqx.is_array)

    def total(params_, copies_):
        n_ = eqx.combine(params_, static)
        with_b = eqx.combine(copies_, copy_static)
        vals = {n_.input_id: _input(n_, x)}
        for s in n_.steps:
            args = [jax.lax.stop_gradient(vals[u]) if stop else vals[u]
                    for u, stop in zip(s.inputs, s.stops)]
            if s.id in with_b:
                fwd, bwd = n_.layers[s.id](args[0]), with_b[s.id](args[0])
                vals[s.id] = jax.lax.stop_gradient(fwd - bwd) + bwd
            else:
                vals[s.id] = _apply(n_.layers[s.id], args)
        return sum(_loss_of(n_, h, vals, labels).mean() for h in n_.loss_heads)

    g_params, g = jax.grad(lambda p, c: total(p, c), argnums=(0, 1))(params, copies)
    out = {n: {k: v for k, v in vars(g[n]).items() if eqx.is_array(v)} for n in fa}
    # Other parameters of FA groups (affine norms) learn from the same FA backward.
    for n, layer in g_params.layers.items():
        if n not in out:
            out[n] = {k: v for k, v in vars(layer).items() if eqx.is_array(v)}
    return out


def _dfa_grads(plan, net, x, labels) -> dict:
    vals = {net.input_id: _input(net, x)}
    for s in net.steps:
        vals[s.id] = jax.lax.stop_gradient(_apply(net.layers[s.id], [vals[u] for u in s.inputs]))
    head = net.loss_head(net.final_loss)
    z = vals[head.logits_node]
    p = jnp.exp(z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True))
    e = (p - jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)) / z.shape[0]
    out = {}
    for need in plan.feedback:
        if need.kind != "direct_feedback_alignment":
            continue
        v = vals[need.node]
        per_example = e @ net.feedback[need.node].matrix / math.prod(v.shape[1:-1])
        delta = jnp.broadcast_to(per_example.reshape(v.shape[0], *(1,) * (v.ndim - 2), -1),
                                 v.shape)
        # The segments ending here: what lies between each layer and the point.
        inputs = {st.id: st.inputs for st in net.steps}
        ancestors, todo = set(), [need.node]
        while todo:
            u = todo.pop()
            if u not in ancestors and u in inputs:
                ancestors.add(u)
                todo.extend(inputs[u])
        live = set(need.layers)
        for st in net.steps:
            if st.id in ancestors and live & set(st.inputs):
                live.add(st.id)
        owners = [st.id for st in net.steps if st.id in live
                  and any(eqx.is_array(a) for a in jax.tree.leaves(net.layers[st.id]))]
        arrays = {n: eqx.partition(net.layers[n], eqx.is_array)[0] for n in owners}
        rests = {n: eqx.partition(net.layers[n], eqx.is_array)[1] for n in owners}

        def segment(arrays_, live=live, rests=rests, end=need.node):
            local = dict(vals)
            for st in net.steps:
                if st.id in live:
                    layer = eqx.combine(arrays_[st.id], rests[st.id]) if st.id in arrays_ \
                        else net.layers[st.id]
                    args = [local[u] if u in live else vals[u] for u in st.inputs]
                    local[st.id] = _apply(layer, args)
                if st.id == end:
                    return local[end]
            raise AssertionError(f"output point {end} is not after {sorted(live)}")

        _, pull = jax.vjp(segment, arrays)
        (g,) = pull(delta)
        for n in owners:
            out[n] = {k: a for k, a in vars(g[n]).items() if eqx.is_array(a)}
    return out


def feedback_reference_grads(plan, net, x, labels) -> dict[str, dict]:
    """node id → parameter name → the reference update, for every FA and DFA layer."""
    out = {}
    if any(f.kind == "feedback_alignment" for f in plan.feedback):
        out.update(_fa_grads(plan, net, x, labels))
    if any(f.kind == "direct_feedback_alignment" for f in plan.feedback):
        out.update(_dfa_grads(plan, net, x, labels))
    return out
