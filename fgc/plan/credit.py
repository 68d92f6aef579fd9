"""Credit assignment for forward-gradient estimates.

A replicated local loss gives one directional derivative per replica
``d[n, p, g]`` (example, patch, channel group). Which replicas a perturbed
unit or weight may be credited with follows from the graph: a unit of a site
answers to replica ``(n, p, g)`` only when every path from it to the loss keeps
patch ``p`` and group ``g`` apart (REFERENCE §3-4). Crediting it with fewer
replicas than it influences would bias the estimate; crediting it with more
only adds variance. These rules are derived from the op table's locality facts,
so a new op or block shape needs no new estimator code.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from fgc.graph.ir import Graph, LossInfo
from fgc.graph.ops import OPS
from fgc.graph.passes import mixing_downstream


@dataclass(frozen=True)
class Credit:
    """How one loss's replica derivatives map onto a node's output units.

    Attributes:
      loss: the loss id.
      patches: keep the patch axis (the unit's own patch answers for it).
      groups: keep the group axis, with this many groups (0: sum over groups).
      examples: keep the example axis (False when batch statistics, e.g. batch
        norm, carry a unit's change into other examples' losses).
    """

    loss: str
    patches: bool
    groups: int
    examples: bool = True


def reaches(graph: Graph, nid: str, loss: LossInfo) -> bool:
    """Whether a change at ``nid`` can reach ``loss`` without crossing a stop edge."""
    target = loss.head_nodes[0] if loss.head_nodes else loss.id
    if graph.edge(loss.source, target).stop_gradient:
        return False
    if nid == loss.source:
        return True
    seen, frontier = {nid}, [nid]
    while frontier:
        u = frontier.pop()
        for v in graph.g.successors(u):
            if v in seen or graph.edge(u, v).stop_gradient or graph.node(v).role != "op":
                continue
            if v == loss.source:
                return True
            seen.add(v)
            frontier.append(v)
    return False


def _mixes_examples(graph: Graph, nid: str, loss: LossInfo) -> bool:
    """Whether some op between ``nid`` and the loss (its head included) uses batch
    statistics."""
    on_path = {nid}
    frontier = [nid]
    while frontier:
        u = frontier.pop()
        for v in graph.g.successors(u):
            if v in on_path or graph.edge(u, v).stop_gradient:
                continue
            d = graph.node(v)
            if d.role == "loss" or (d.role == "head" and d.loss != loss.id):
                continue
            if d.role == "op" and not reaches(graph, v, loss):
                continue
            on_path.add(v)
            frontier.append(v)
    return any(OPS[graph.node(n).kind].mixes_examples for n in on_path
               if graph.node(n).kind in OPS)


def credits(graph: Graph, nid: str, rule: str = "exact") -> list[Credit]:
    """The credit rule of every loss that a unit of ``nid``'s output reaches.

    ``rule`` is the estimator's ``credit``: ``exact`` follows every path; ``ignore_norm``
    lets a unit answer to its own patch and group through normalisation layers that in
    fact mix them (Ren et al.'s released code; biased, with less variance).
    """
    out = []
    shape = graph.node(nid).shape
    for loss in graph.losses.values():
        if not reaches(graph, nid, loss):
            continue
        ignore_norm = rule == "ignore_norm"
        mixes_p, kept = mixing_downstream(graph, nid, {loss.source}, norms_local=ignore_norm)
        src = graph.node(loss.source)
        if src.kind in OPS and not (ignore_norm and OPS[src.kind].role == "norm"):
            mixes_p |= OPS[src.kind].mixes_patches
        keep_p = ("patches" in loss.replicate and not mixes_p and len(shape) >= 2
                  and tuple(shape[:-1]) == tuple(src.shape[:-1]))
        g = loss.groups if "groups" in loss.replicate else 0
        keep_g = bool(g) and kept is not None and (kept == 0 or kept % g == 0) \
            and shape[-1] % g == 0
        out.append(Credit(loss.id, keep_p, g if keep_g else 0,
                          not _mixes_examples(graph, nid, loss)))
    return out


def reduce_replicas(d: jnp.ndarray, credit: Credit) -> jnp.ndarray:
    """Sums a loss's derivatives ``[B, P, G]`` (or ``[B]``) over the replicas a unit
    cannot be told apart by: returns ``[B|1, P|1, G|1]``."""
    if d.ndim == 1:
        d = d[:, None, None]
    if not credit.patches:
        d = d.sum(axis=1, keepdims=True)
    if not credit.groups:
        d = d.sum(axis=2, keepdims=True)
    if not credit.examples:
        d = d.sum(axis=0, keepdims=True)
    return d


def unit_credit(d: jnp.ndarray, credit: Credit, unit_shape: tuple[int, ...]) -> jnp.ndarray:
    """Per-example credit for every unit of a site, broadcastable to ``[B, *unit_shape]``.

    A unit at position ``p`` (a patch, or a pixel of an image) and channel ``c`` gets
    ``d[n, p, group(c)]`` where those axes are kept, else the sum over them.
    """
    r = reduce_replicas(d, credit)  # [B|1, P|1, G|1]
    b, p, g = r.shape
    c = unit_shape[-1]
    if g > 1:
        r = jnp.repeat(r, c // g, axis=2)  # group g covers channels g*C/G ...
    pos = unit_shape[:-1]
    if p > 1:
        return r.reshape((b, *pos, r.shape[2]))
    return r.reshape((b,) + (1,) * len(pos) + (r.shape[2],))


def weight_credit(d: jnp.ndarray, credit: Credit, kind: str, out_units: int) -> jnp.ndarray:
    """Credit of a weight's output slices, summed over the batch: a vector over the
    weight's output axis (patches for token_mix, channels otherwise).

    A weight slice shared by all patches answers to the replicas of every patch
    (distinct replicas, each counted once).
    """
    r = reduce_replicas(d, credit).sum(axis=0)  # [P|1, G|1]
    if kind == "token_mix":
        per_patch = r.sum(axis=1)  # [P|1]
        return jnp.broadcast_to(per_patch, (out_units,)) if per_patch.shape[0] == 1 else per_patch
    per_group = r.sum(axis=0)  # [G|1]
    return jnp.repeat(per_group, out_units // per_group.shape[0])
