"""Analyses over a built graph: shapes and parameters."""

from __future__ import annotations

from fgc.graph.ir import Graph
from fgc.graph.ops import OPS, ShapeError


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
