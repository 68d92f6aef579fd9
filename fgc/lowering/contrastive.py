"""SimCLR's InfoNCE loss, plain and replicated over patches and groups with a fused rule.

The batch holds two views of each example: rows ``n`` and ``n + N/2`` of an ``N``-row
batch are the positive pair (:mod:`fgc.training.views` stacks them so). Each row ``i``
is a *query* ``q_i = e_i / ‖e_i‖`` of its embedding ``e_i``; every other row ``j`` is a
*key* ``k_j``; the loss of row ``i`` is

    L[i] = logsumexp_{j ≠ i} (q_i · k_j / τ) − q_i · k_pair(i) / τ

(Ren et al.'s released code, their `simclr_sg`: both views' losses, each row against the
other 2B − 1 rows). With ``stop_keys`` the keys are stop-gradiented, so row ``i``'s
loss differentiates through its own query only and examples do not couple.

Replicated like the cross-entropy (:mod:`fgc.lowering.replicated`): on a block output
``h [N, P, C]`` with the head ``mean over patches -> linear [C, D] + b``, replica
``(i, p, g)`` has the value ``L[i]`` and differentiates through ``h[i, p, group g]``
only. With stopped keys the loss is row-separable and one pass gives every replica's
derivative:

    dL[i, p, g] = Σ_{c∈g} dh[i, p, c] / P · gl[i, c]  +  (mean_p(h) @ dW + db)[i] · ge[i]

with ``gq = (softmax − onehot(pair)) @ q / τ`` (the query's gradient with the keys
fixed), ``ge = (gq − q (q · gq)) / ‖e‖`` (back through the L2 normalisation) and
``gl = ge @ W.T``. Reverse mode comes by transposing this linear rule, as for the
cross-entropy. Without stopped keys every row's loss depends on every row; that has
no fused rule here (:func:`naive_replicated` builds it literally).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["infonce", "naive_replicated", "replicated_infonce"]

EPS = 1e-12  # floor of ‖e‖², as Ren et al.'s l2_normalize


def _normalize(e: jax.Array) -> jax.Array:
    return e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), EPS))


def _check_rows(n: int) -> None:
    if n % 2:
        raise ValueError(f"a contrastive loss needs two views of each example (an even "
                         f"number of rows, view 1 then view 2), got {n} rows")


def _logits(q: jax.Array, k: jax.Array, temperature: float) -> jax.Array:
    """``q_i · k_j / τ`` with each row's own column removed (−inf)."""
    n = q.shape[0]
    s = (q @ k.T) / temperature
    return jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, s)


def _pairs(n: int) -> jax.Array:
    return (jnp.arange(n) + n // 2) % n


def infonce(z: jax.Array, temperature: float = 0.5, stop_keys: bool = True) -> jax.Array:
    """Per-row InfoNCE of embeddings ``z [N, D]`` whose rows ``n`` and ``n + N/2`` are the
    two views of one example.

    Args:
        z: head outputs, shape ``[N, D]``, ``N`` even (view 1 rows, then view 2 rows).
        temperature: τ > 0.
        stop_keys: stop-gradient on the keys (each row differentiates through its
            own query only).

    Returns:
        The loss of every row, shape ``[N]``.
    """
    _check_rows(z.shape[0])
    q = _normalize(z)
    k = jax.lax.stop_gradient(q) if stop_keys else q
    logits = _logits(q, k, temperature)
    lse = jax.scipy.special.logsumexp(logits, axis=-1)
    pos = jnp.take_along_axis(logits, _pairs(z.shape[0])[:, None], axis=-1)[:, 0]
    return lse - pos


def _head(h, w, b):
    return jnp.mean(h, axis=1) @ w + b[None]


def _check(h, w, b, groups):
    if h.ndim != 3:
        raise ValueError(f"h must be [N, P, C]; got shape {h.shape}")
    _check_rows(h.shape[0])
    c = h.shape[-1]
    if not isinstance(groups, int) or groups < 1 or c % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing C={c}")
    if w.ndim != 2 or w.shape[0] != c or b.shape != (w.shape[1],):
        raise ValueError(f"w must be [C={c}, D] and b [D]; got {w.shape} and {b.shape}")


# groups and temperature fix the computation (Python numbers): nondiff arguments.
@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _fused(groups, temperature, h, w, b):
    n, p, _ = h.shape
    loss = infonce(_head(h, w, b), temperature, True)
    return jnp.broadcast_to(loss[:, None, None], (n, p, groups))


@_fused.defjvp
def _fused_jvp(groups, temperature, primals, tangents):
    h, w, b = primals
    dh, dw, db = tangents
    n, p, c = h.shape

    # Residuals (functions of the primals only).
    hbar = jnp.mean(h, axis=1)                                    # [N, C]
    e = hbar @ w + b[None]                                        # [N, D]
    sq = jnp.sum(e * e, axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(jnp.maximum(sq, EPS))
    q = e * inv
    probs = jax.nn.softmax(_logits(q, q, temperature), axis=-1)   # [N, N], 0 on the diagonal
    r = probs - jax.nn.one_hot(_pairs(n), n, dtype=q.dtype)
    gq = (r @ q) / temperature                                    # dL_i/dq_i, keys fixed
    live = (sq > EPS).astype(q.dtype)                             # below the floor: a plain scale
    ge = inv * (gq - live * q * jnp.sum(q * gq, axis=-1, keepdims=True))  # dL_i/de_i
    gl = (ge @ w.T) / p                                           # [N, C] = dL_i/dh[i, p, :]

    # h-term: replica (i, p, g) sees only dh[i, p, group g] (one fused pass over dh).
    if groups == 1:
        dh_h = jnp.einsum("npc,nc->np", dh, gl)[:, :, None]
    else:
        cg = c // groups
        dh_h = jnp.sum(dh.reshape(n, p, groups, cg) * gl.reshape(n, 1, groups, cg), axis=-1)
    # Head parameters are shared by every replica of row i.
    dh_par = jnp.sum((hbar @ dw + db[None]) * ge, axis=-1)        # [N]

    # The primal through the rule itself, so a reverse pass around this jvp sees the
    # replicas' masks (see fgc.lowering.replicated._fused_jvp).
    out = _fused(groups, temperature, h, w, b)
    return out, (dh_h + dh_par[:, None, None]).astype(out.dtype)


def replicated_infonce(h: jax.Array, w: jax.Array, b: jax.Array, groups: int,
                       temperature: float = 0.5) -> jax.Array:
    """Replicated InfoNCE with stopped keys, fused: one head pass for every replica.

    Forward value ``L[i, p, g] = infonce(mean_p(h) @ w + b)[i]`` for every ``p, g``;
    replica ``(i, p, g)`` depends on ``h`` only through ``h[i, p, group g]`` (and on
    ``w``, ``b`` in full). First derivatives (forward and reverse) match
    :func:`naive_replicated` of :func:`infonce` with ``stop_keys=True``.

    Args:
        h: block output ``[N, P, C]``, ``N`` even (two views per example).
        w: head weight ``[C, D]``.
        b: head bias ``[D]``.
        groups: channel groups ``G`` dividing ``C``. Static.
        temperature: τ > 0. Static.

    Returns:
        The replicated losses, ``[N, P, G]``.
    """
    _check(h, w, b, groups)
    return _fused(groups, float(temperature), h, w, b)


def _masks(p: int, c: int, groups: int, dtype) -> jax.Array:
    patch = jnp.eye(p, dtype=dtype)[:, None, :, None]
    group = jnp.repeat(jnp.eye(groups, dtype=dtype), c // groups, axis=1)
    return (patch * group[None, :, None, :]).reshape(p * groups, p, c)


def naive_replicated(loss_fn, h: jax.Array, w: jax.Array, b: jax.Array,
                     groups: int) -> jax.Array:
    """Any per-row loss of the head ``mean_p | linear``, replicated literally.

    For each (patch, group) mask ``m`` the head runs on ``stop_gradient(h) + m * (h −
    stop_gradient(h))``, the mask applying to **every row**: a loss that couples rows
    (InfoNCE without stopped keys) then lets replica ``(i, p, g)`` differentiate
    through slice ``(p, g)`` of every row. ``P · G`` head passes; the reference for
    tests and the lowering of kinds without a fused rule.

    Args:
        loss_fn: ``z [N, D] -> [N]``.
        h, w, b, groups: as :func:`replicated_infonce`.

    Returns:
        ``[N, P, G]``.
    """
    n, p, c = h.shape
    hs = jax.lax.stop_gradient(h)
    per_mask = jax.vmap(lambda m: loss_fn(_head(hs + m[None] * (h - hs), w, b)))(
        _masks(p, c, groups, h.dtype))                            # [P * G, N]
    return per_mask.T.reshape(n, p, groups)
