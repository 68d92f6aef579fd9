"""Replicated local losses with a fused forward-mode rule.

Ren et al. (2023), "Scaling Forward Gradient With Local Losses": a local loss
head on a block output ``h`` of shape ``[B, P, C]`` (``B`` examples, ``P``
patches, ``C`` channels split into ``G`` groups of ``C // G``) is

    mean over patches -> linear ``[C, K]`` + bias ``[K]`` -> softmax cross-entropy.

The loss is *replicated*: ``L[n, p, g]`` has the same forward value for every
patch ``p`` and group ``g`` (the cross-entropy of example ``n``), but the
derivative of replica ``(n, p, g)`` flows only through ``h[n, p, group g]``;
every other patch and group is stop-gradiented. Each replica is the loss whose
forward gradient trains the units of one (patch, group), so perturbations of
other units do not add noise to its estimate.

Built literally (:func:`naive_replicated_xent`) that costs ``P * G`` head
passes. :func:`replicated_xent` gets every replica's directional derivative
from one pass through a custom JVP rule:

    dL[n, p, g] = sum_{c in g} dh[n, p, c] / P * gl[n, c]
                  + sum_k (mean_p(h) @ dW + db)[n, k] * r[n, k]

with ``r = softmax(logits) - onehot(y)`` and ``gl = r @ W.T``. The rule is
linear in the tangents and uses only transposable ops, so JAX derives reverse
mode by transposition; no custom VJP is needed.

Only first derivatives match the naive construction. The fused rule's
residual ``gl`` depends on the whole of ``h``, while in the naive version
second-order terms are masked too, so ``jax.hessian`` of the two differ. The
forward-gradient training this serves only takes first derivatives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["xent", "replicated_xent", "naive_replicated_xent"]


def xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels.

    Args:
        logits: Unnormalised scores, shape ``[B, K]``.
        labels: Integer class ids in ``[0, K)``, shape ``[B]``.

    Returns:
        The cross-entropy of each example, shape ``[B]``.
    """
    # log_softmax subtracts the max before exponentiating, so large logits
    # neither overflow nor lose the small ones to rounding.
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def _head_logits(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Mean over patches, then the linear head: ``[B, P, C] -> [B, K]``."""
    return jnp.mean(h, axis=1) @ w + b[None]


def _check(h: jax.Array, w: jax.Array, b: jax.Array, labels: jax.Array, groups: int):
    """Raises ValueError on shapes the head cannot take (shapes are static)."""
    if h.ndim != 3:
        raise ValueError(
            f"h must be [B, P, C]; got shape {h.shape}. Add a patch axis of size 1 "
            "(h[:, None, :]) for a block without patches.")
    _, _, c = h.shape
    if not isinstance(groups, int) or groups < 1 or c % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing C={c}")
    if w.ndim != 2 or w.shape[0] != c:
        raise ValueError(f"w must be [C={c}, K]; got shape {w.shape}")
    if b.shape != (w.shape[1],):
        raise ValueError(f"b must be [K={w.shape[1]}]; got shape {b.shape}")
    if labels.shape != (h.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integer class ids of shape [B={h.shape[0]}]; "
            f"got {labels.dtype} {labels.shape}")


# `groups` is a Python int that fixes shapes, so it is a nondiff argument.
# `labels` stays a regular argument: it is an integer array, so JAX hands the
# rule a float0 tangent for it, which the rule ignores. (Passing a traced
# array through nondiff_argnums is discouraged by JAX.)
@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fused(groups, h, w, b, labels):
    bsz, p, _ = h.shape
    loss = xent(_head_logits(h, w, b), labels)
    # Every replica has the same forward value: a broadcast, not P*G passes.
    return jnp.broadcast_to(loss[:, None, None], (bsz, p, groups))


@_fused.defjvp
def _fused_jvp(groups, primals, tangents):
    h, w, b, labels = primals
    dh, dw, db, _ = tangents  # labels' tangent is float0: nothing to carry
    bsz, p, c = h.shape
    k = w.shape[1]

    # Residuals: functions of the primals only, so JAX keeps them out of the
    # linear (transposed) part of the computation.
    hbar = jnp.mean(h, axis=1)                                   # [B, C]
    logits = hbar @ w + b[None]                                  # [B, K]
    r = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(labels, k, dtype=logits.dtype)
    gl = (r @ w.T) / p                                           # [B, C] = dL/dh[n, p, :]

    # h-term: replica (n, p, g) sees only dh[n, p, group g]. A broadcast
    # multiply and a sum over the last axis, which XLA fuses into one pass
    # over dh: nothing of size B*P*G*C is built, nor even a copy of dh (an
    # einsum would transpose dh to put (n, g) first). Its transpose is a
    # broadcast multiply that writes a cotangent the size of dh.
    if groups == 1:
        # One group: a batched mat-vec. XLA:CPU reduces a long minor axis
        # (C) about 30x slower than it runs this dot.
        dh_h = jnp.einsum("npc,nc->np", dh, gl)[:, :, None]
    else:
        cg = c // groups
        dh_h = jnp.sum(
            dh.reshape(bsz, p, groups, cg) * gl.reshape(bsz, 1, groups, cg), axis=-1)

    # Head-parameter term: W and b are not masked, so every replica of example
    # n receives the whole d logits . r.
    dlogits = hbar @ dw + db[None]                               # [B, K]
    dh_par = jnp.sum(dlogits * r, axis=-1)                       # [B]

    # The primal output through the custom rule itself, not as a plain broadcast: a
    # reverse pass around this jvp (weight perturbation's exact gradients for heads
    # and backprop groups) then differentiates it with the replicas' masks, where a
    # plain broadcast would hand each replica all of h (P·G times the gradient).
    out = _fused(groups, h, w, b, labels)
    dout = (dh_h + dh_par[:, None, None]).astype(out.dtype)
    return out, dout


def replicated_xent(
    h: jax.Array, w: jax.Array, b: jax.Array, labels: jax.Array, groups: int
) -> jax.Array:
    """Replicated local cross-entropy loss, fused: one head pass for all replicas.

    Forward value: ``L[n, p, g] = CE(mean_p(h[n]) @ w + b, labels[n])`` for all
    ``p, g``. Derivative: replica ``(n, p, g)`` depends on ``h`` only through
    ``h[n, p, g * C // G:(g + 1) * C // G]`` (and on ``w``, ``b`` in full).
    Forward and reverse mode both work (reverse by transposing the JVP rule);
    only first derivatives are defined to match :func:`naive_replicated_xent`.

    Args:
        h: Block output, shape ``[B, P, C]``. A block with no patch axis must pass
            ``h[:, None, :]`` (``P = 1``).
        w: Head weight, shape ``[C, K]``.
        b: Head bias, shape ``[K]``.
        labels: Integer class ids, shape ``[B]``. Not differentiable.
        groups: Number of channel groups ``G``; must divide ``C``. Static.

    Returns:
        The replicated losses, shape ``[B, P, G]``.
    """
    labels = jnp.asarray(labels)
    _check(h, w, b, labels, groups)
    return _fused(groups, h, w, b, labels)


def _masks(p: int, c: int, groups: int, dtype) -> jax.Array:
    """One-hot (patch, channel-group) masks, shape ``[P * G, P, C]``."""
    patch = jnp.eye(p, dtype=dtype)[:, None, :, None]            # [P, 1, P, 1]
    group = jnp.repeat(jnp.eye(groups, dtype=dtype), c // groups, axis=1)  # [G, C]
    return (patch * group[None, :, None, :]).reshape(p * groups, p, c)


def naive_replicated_xent(
    h: jax.Array, w: jax.Array, b: jax.Array, labels: jax.Array, groups: int
) -> jax.Array:
    """Replicated local cross-entropy built literally; the reference for tests.

    For each (patch, group) mask ``m`` the head runs on
    ``stop_gradient(h) + m * (h - stop_gradient(h))``, which equals ``h`` in
    value but lets derivatives through only where ``m`` is one. Costs ``P * G``
    head passes and ``P * G`` copies of ``h``; use :func:`replicated_xent`.

    Args:
        h: Block output, shape ``[B, P, C]``.
        w: Head weight, shape ``[C, K]``.
        b: Head bias, shape ``[K]``.
        labels: Integer class ids, shape ``[B]``.
        groups: Number of channel groups ``G``; must divide ``C``.

    Returns:
        The replicated losses, shape ``[B, P, G]``.
    """
    labels = jnp.asarray(labels)
    _check(h, w, b, labels, groups)
    bsz, p, c = h.shape
    hs = jax.lax.stop_gradient(h)

    def one(mask):
        return xent(_head_logits(hs + mask[None] * (h - hs), w, b), labels)  # [B]

    per_mask = jax.vmap(one)(_masks(p, c, groups, h.dtype))         # [P * G, B]
    return per_mask.T.reshape(bsz, p, groups)
