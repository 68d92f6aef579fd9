"""Analyses over a built graph: shapes and parameters, and channel/patch locality."""

from __future__ import annotations

from fgc.graph.ir import Graph
from fgc.graph.ops import OPS, ShapeError, group_count


def infer_shapes(graph: Graph, diags) -> None:
    """Fills ``shape`` and ``params`` of every node in topological order.

    A node whose inputs have no shape (an earlier error) is skipped silently, so
    one mistake is reported once.
    """
    for nid in graph.topo():
        d = graph.node(nid)
        if d.role in ("input",):
            continue
        ins = [graph.node(u).shape for u in graph.inputs(nid)]
        if any(s is None for s in ins):
            continue
        if d.role == "loss":
            d.shape = ()
            continue
        opdef = OPS[d.kind]
        try:
            d.shape = tuple(opdef.infer(ins, d.attrs))
            d.params = {k: tuple(v) for k, v in opdef.params(ins[0], d.attrs).items()}
        except ShapeError as e:
            msg = str(e)
            if not msg.startswith(d.kind):  # "conv needs an image", not "conv: conv needs ..."
                msg = f"{d.kind}: {msg}"
            if d.kind == "add":
                a, b = graph.inputs(nid)
                msg += f" (from `{a}` and `{b}`)"
            diags.add(e.code, msg, d.span, e.hint)


def mixing_downstream(graph: Graph, start: str, stop: set[str],
                      norms_local: bool = False) -> tuple[bool, int | None]:
    """What happens to a unit of ``start`` on its way to any node in ``stop``.

    Returns (mixes_patches, groups_kept): whether some path mixes patches, and
    the finest channel-group count G such that every path keeps groups of
    ``G`` apart (None when some path mixes all channels, 0 when no op on any path
    touches channels across units, i.e. any grouping is kept). With
    ``norms_local`` normalisation layers count as keeping every unit apart (the
    ``ignore_norm`` credit rule).
    """
    mixes_patches = False
    groups = 0  # 0 = no constraint yet
    seen = set()
    frontier = [start]
    while frontier:
        nid = frontier.pop()
        for nxt in graph.g.successors(nid):
            if nxt in seen or graph.edge(nid, nxt).stop_gradient:
                continue
            seen.add(nxt)
            d = graph.node(nxt)
            if d.role == "loss" or nxt in stop:
                continue
            op = OPS[d.kind]
            if norms_local and op.role == "norm":
                frontier.append(nxt)
                continue
            mixes_patches |= op.mixes_patches
            g = group_count(op, d.attrs)
            if op.mixes_channels or g == 1:
                groups = None
            elif g and groups is not None:
                groups = g if groups == 0 else _gcd(groups, g)
            frontier.append(nxt)
    return mixes_patches, groups


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
