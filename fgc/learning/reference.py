"""Ground truth for the update rules, written independently of them.

:func:`reference_objective` is what every algorithm's update should equal in
expectation: ``Σ_losses mean_batch L`` of the plain (unreplicated) losses, through
the plan's stop-gradient edges, computed by its own small interpreter over the
network's layers and its own cross-entropy. It shares no code with the credit
map, the fused replicated losses or the estimators.

Why plain losses are the target of the replicated objective: replica ``(n, p, g)``
reads the head input ``h`` through its own slice only, and the slices partition
``h``, so ``Σ_r ∂L_r/∂h = ∂L/∂h``: the gradient of the replicated objective on the
backbone is the plain loss's. Head parameters after the head's ``mean`` are
shared by every replica and learn by the single loss's gradient too.
:func:`naive_objective` builds the replicas literally, with explicit masks and
stop-gradients, so the tests can check that claim on small networks.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from fgc.lowering.modules import StatefulLayer, trainable
from fgc.training.data import normalize

__all__ = ["naive_objective", "reference_grads", "reference_objective"]


def _xent(logits, labels):
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _values(net, x, *, replace: dict | None = None):
    """Every node's value, running the steps with their stop edges; ``replace`` maps
    node id → a function of its computed value (the naive masks)."""
    if net.input_mean is not None:  # as the network does it (fgc.training.data.normalize)
        x = normalize(x, net.input_mean, net.input_std)
    vals = {net.input_id: x}
    for s in net.steps:
        args = [jax.lax.stop_gradient(vals[u]) if stop else vals[u]
                for u, stop in zip(s.inputs, s.stops)]
        layer = net.layers[s.id]
        out = layer(*args, train=True) if isinstance(layer, StatefulLayer) else layer(*args)
        if replace and s.id in replace:
            out = replace[s.id](out)
        vals[s.id] = out
    return vals


def _infonce(z, temperature, stop_keys):
    """InfoNCE row by row: row i against every other row, its positive the other view
    (row i ± N/2); written out, not shared with fgc.lowering.contrastive."""
    n = z.shape[0]
    q = z / jnp.sqrt(jnp.sum(z ** 2, axis=1, keepdims=True))
    k = jax.lax.stop_gradient(q) if stop_keys else q
    rows = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        s = jnp.stack([jnp.dot(q[i], k[j]) for j in others]) / temperature
        rows.append(jax.scipy.special.logsumexp(s) - s[others.index((i + n // 2) % n)])
    return jnp.stack(rows)


def _loss_of(net, head, vals, labels):
    z = vals[head.logits_node]
    if head.stop:
        z = jax.lax.stop_gradient(z)
    if head.kind == "xent":
        return _xent(z, labels)
    if head.kind == "contrastive":
        return _infonce(z, head.opts["temperature"], head.opts["stop_keys"])
    raise NotImplementedError(f"no reference for loss kind `{head.kind}`")


def reference_objective(net, x, labels):
    """``Σ_losses mean_batch L`` of the plain losses (heads run as written)."""
    vals = _values(net, x)
    return sum(_loss_of(net, h, vals, labels).mean() for h in net.loss_heads)


def naive_objective(net, x, labels):
    """``Σ_losses mean_batch Σ_replicas L[n, p, g]`` with every replica built literally:
    the head input is stop-gradiented except on the replica's own patch and group
    (P·G head passes per loss; small networks only)."""
    total = 0.0
    for head in net.loss_heads:
        if not head.replicate:
            total = total + _loss_of(net, head, _values(net, x), labels).mean()
            continue
        mean_id = head.head[-2]
        h_id = next(s for s in net.steps if s.id == mean_id).inputs[0]
        h_shape = next(s.shape for s in net.steps if s.id == h_id) if h_id != net.input_id \
            else net.input_shape
        positions = int(jnp.prod(jnp.array(h_shape[:-1]))) if len(h_shape) > 1 else 1
        patches = positions if "patches" in head.replicate else 1
        groups = head.groups
        width = h_shape[-1]
        for p in range(patches):
            for g in range(groups):
                mask = jnp.zeros((positions, width))
                rows = slice(p, p + 1) if "patches" in head.replicate else slice(None)
                mask = mask.at[rows, g * width // groups:(g + 1) * width // groups].set(1.0)
                mask = mask.reshape(h_shape)

                def only(v, mask=mask):
                    sg = jax.lax.stop_gradient(v)
                    return sg + mask[None] * (v - sg)

                vals = _values(net, x, replace={h_id: only})
                total = total + _loss_of(net, head, vals, labels).mean()
    return total


def reference_grads(net, x, labels):
    """``jax.grad`` of :func:`reference_objective` over the trainable arrays."""
    params, static = eqx.partition(net, trainable(net))
    return jax.grad(lambda p: reference_objective(eqx.combine(p, static), x, labels))(params)
