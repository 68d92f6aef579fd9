"""`fgc check --summary`: per-layer output shapes and parameter counts."""

from __future__ import annotations

from fgc.graph.ir import Graph


def summary_rows(graph: Graph) -> list[tuple[str, str, str, int]]:
    """(node id, op, output shape, parameter count) for every node, in order."""
    rows = []
    for nid in graph.topo():
        d = graph.node(nid)
        if d.role == "loss":
            continue
        shape = "?" if d.shape is None else "×".join(map(str, d.shape)) or "scalar"
        rows.append((nid, d.kind, shape, d.num_params))
    return rows


def summary_table(graph: Graph) -> str:
    rows = summary_rows(graph)
    w = max(len(r[0]) for r in rows)
    title = graph.meta.get("title") or graph.meta.get("path")
    lines = [f"{title} ({graph.meta.get('path')})",
             f"{'node':<{w}}  {'op':<14} {'output':>14} {'params':>12}"]
    for nid, kind, shape, n in rows:
        lines.append(f"{nid:<{w}}  {kind:<14} {shape:>14} {n:>12,}")
    for label, n in subtotals(graph):
        lines.append(f"{label:<{w}}  {'':<14} {'':>14} {n:>12,}")
    lines.append(f"{'total':<{w}}  {'':<14} {'':>14} {graph.num_params():>12,}")
    return "\n".join(lines)


def subtotals(graph: Graph) -> list[tuple[str, int]]:
    """The network with its final head(s), and the local heads (auxiliary nets) apart;
    empty when the spec has no local loss (the total says it all)."""
    local = {l.id for l in graph.losses.values() if not l.final}
    if not local:
        return []
    aux = sum(graph.node(n).num_params for n in graph.topo()
              if graph.node(n).role == "head" and graph.node(n).loss in local)
    return [("network + final heads", graph.num_params() - aux), ("local heads", aux)]
