"""The K tangents of a forward-gradient pass: evaluated in chunks, and laid out in the
independent partitions an aggregation's :meth:`~fgc.learning.aggregate.Aggregation.prepare`
acts on.

**Chunks.** ``forward(tangents = K, chunk = C)`` evaluates the jvp C tangents at a time
(``jax.lax.scan`` over the chunks, each vmapped), so the tangents carried through the
network at once — the memory that grows with K — are C, not K. Only the directional
derivatives (one number per loss replica and tangent) are kept per tangent; the noise
itself is drawn for all K at once, so the result equals the unchunked one (up to
float round-off). C need not divide K: the first chunk takes the remainder.

**Partitions.** A partition is a set of noise dimensions whose K directions an aggregation
may mix (orthogonalise); different partitions' noise stays independent, which is what
keeps an aggregation that is unbiased on one partition unbiased on all of them
(:mod:`fgc.learning.aggregate`). fgc takes the credit map's slices: the smallest sets
such that every unit a single replica's directional derivative is credited to lies in
one of them —

- activity perturbation: per site, per example (unless a credit sums over examples),
  per patch (unless a credit sums over patches), per channel group (the greatest common
  divisor of the credits' group counts; all channels where a credit sums over groups);
- weight perturbation: per parameter array, per credit slice of its output units (a
  channel group, or a patch for token mixing), all of the array where the credit is one
  sum.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fgc.plan.credit import Credit


# --- chunks ------------------------------------------------------------------------------------

def _lead(tree) -> int:
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def over_tangents(one, tangents):
    """``one`` on each tangent (leading axis K): per-tangent outputs stacked, the
    primal-only auxiliary output once. One tangent runs without ``vmap``: a batch
    axis of size 1 costs XLA:CPU layout copies around every matmul."""
    if _lead(tangents) == 1:
        out, aux = one(jax.tree_util.tree_map(lambda t: t[0], tangents))
        return jax.tree_util.tree_map(lambda a: a[None], out), aux
    return jax.vmap(one, out_axes=(0, None))(tangents)


def split_chunks(tangents, chunk: int | None):
    """``(first, rest)``: the first chunk (the remainder of K over ``chunk``, or a whole
    chunk) and the others stacked ``[chunks, chunk, ...]`` (None when there are none)."""
    k = _lead(tangents)
    if chunk is None or chunk >= k:
        return tangents, None
    m = math.ceil(k / chunk)
    f = k - (m - 1) * chunk
    first = jax.tree_util.tree_map(lambda t: t[:f], tangents)
    rest = jax.tree_util.tree_map(lambda t: t[f:].reshape(m - 1, chunk, *t.shape[1:]), tangents)
    return first, rest


def scan_chunks(one, rest):
    """``one``'s per-tangent outputs over stacked chunks, flattened to ``[tangents, ...]``
    (its auxiliary output is dropped: the first chunk gave it)."""
    def body(carry, chunk):
        out, _ = jax.vmap(one, out_axes=(0, None))(chunk)
        return carry, out

    _, outs = jax.lax.scan(body, None, rest)
    return jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), outs)


def join(first, rest):
    """The first chunk's outputs followed by :func:`scan_chunks`'."""
    if rest is None:
        return first
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), first, rest)


def over_tangents_chunked(one, tangents, chunk: int | None):
    """:func:`over_tangents`, ``chunk`` tangents at a time (all of them when None)."""
    first, rest = split_chunks(tangents, chunk)
    out, aux = over_tangents(one, first)
    return join(out, None if rest is None else scan_chunks(one, rest)), aux


# --- partitions --------------------------------------------------------------------------------

def _groups(credits: tuple[Credit, ...]) -> int:
    """Channel groups every credit keeps apart (1: one credit sums over groups)."""
    gs = [c.groups for c in credits]
    return math.gcd(*gs) if gs and all(gs) else 1


def prepare_site(agg, z, shape: tuple[int, ...], credits: tuple[Credit, ...]):
    """``agg.prepare`` on a site's noise ``[K, B, *shape]``, partitioned by its credits."""
    if not credits:  # a dead site: its noise reaches no loss
        return z
    k, b = z.shape[:2]
    c = shape[-1]
    p = math.prod(shape[:-1])
    g = _groups(credits)
    per_example = all(cr.examples for cr in credits)
    per_patch = all(cr.patches for cr in credits)
    x = z.reshape(k, b, p, g, c // g)
    # axes 1..4 = example, position, group, channel-in-group; kept axes become partitions.
    keep = [1] * per_example + [2] * per_patch + [3]
    merge = [1] * (not per_example) + [2] * (not per_patch) + [4]
    order = (0, *keep, *merge)
    y = jnp.transpose(x, order)
    kept = y.shape[1:1 + len(keep)]
    y = agg.prepare(y.reshape(k, math.prod(kept), -1)).reshape(y.shape)
    return jnp.transpose(y, np.argsort(order)).reshape(z.shape)


def _unit_ids(shape: tuple[int, ...], kind: str, out_units: int, slices: int) -> np.ndarray:
    """The credit slice of every element of a parameter array (its output unit's slice),
    laid out as :func:`fgc.learning.passes._expand_units` lays out credits."""
    ids = np.arange(out_units) // (out_units // slices)
    if kind == "group_linear":
        g = shape[0]
        ids = ids.reshape(g, 1, -1) if len(shape) == 3 else ids.reshape(g, -1)
    else:
        ids = ids.reshape((1,) * (len(shape) - 1) + (shape[-1],))
    return np.broadcast_to(ids, shape).ravel()


def weight_slices(kind: str, credits: tuple[Credit, ...], out_units: int) -> int:
    """How many credit slices a weight's output units fall into (:func:`weight_credit`)."""
    if not credits:
        return 1
    if kind == "token_mix":
        return out_units if all(c.patches for c in credits) else 1
    return _groups(credits)


def prepare_weight(agg, v, kind: str, credits: tuple[Credit, ...], out_units: int):
    """``agg.prepare`` on one parameter array's tangents ``[K, *shape]``, one partition
    per credit slice of its output units."""
    k, shape = v.shape[0], v.shape[1:]
    slices = weight_slices(kind, credits, out_units)
    flat = v.reshape(k, -1)
    if slices == 1:
        return agg.prepare(flat[:, None]).reshape(v.shape)
    perm = np.argsort(_unit_ids(shape, kind, out_units, slices), kind="stable")
    parts = agg.prepare(flat[:, perm].reshape(k, slices, -1)).reshape(k, -1)
    return parts[:, np.argsort(perm)].reshape(v.shape)
