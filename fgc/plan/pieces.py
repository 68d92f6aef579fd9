"""Pieces: the parts of a greedy plan that a train step can run one after another.

A greedy algorithm cuts every edge between blocks (:func:`fgc.plan.program._mark_stops`):
no gradient and no tangent crosses them, so each block with its local heads learns from
its own losses alone. ``plan_pieces`` turns that fact into a partition of the program's op
and head nodes, decided once here and read by lowering (``Network.pieces``) and by the
update rules (:class:`fgc.learning.estimators.UpdateRule` runs each piece's forward,
tangents and local backward in turn, so a piece's values, noise and tangents are dead
before the next piece starts). The same unit is what a later stage may place on
different devices.

The pieces are the connected components of the program over the edges that carry
gradients (a loss always sits with what it reads), ordered so that every piece reads
only the input and the pieces before it. Every edge from one piece into another is then
a stop edge, and every loss with its whole head lies inside one piece: the objective is a
sum over pieces of terms that depend on that piece's parameters only, and its gradient
(exact or estimated) is the pieces' gradients side by side. Components that would read
each other both ways (possible only through a spec's own ``stopgrad``) are merged.

Non-greedy algorithms get one piece: their only cut edges are a readout or a spec's
``stopgrad``, which would split off a small head and leave the backbone, where the
memory is, in one piece.

Example:
    >>> plan = fgc.load("specs/mixer-m-8-16.fg").plan("lg-fg-a")   # doctest: +SKIP
    >>> [p.name for p in plan.pieces]                               # doctest: +SKIP
    ['stem.1', 'mixer.1', 'mixer.2', 'mixer.3', 'final']
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from fgc.front.config import Algorithm
from fgc.graph.ir import Graph

__all__ = ["Piece", "plan_pieces"]


@dataclass(frozen=True)
class Piece:
    """One piece of a plan: op and head nodes whose gradients involve nothing outside.

    Attributes:
      name: the block instances it holds (``mixer.1``), else its losses' names.
      nodes: its op and head node ids, in topological order.
      losses: the ids of the losses it computes (each with its whole head).
      reads: nodes of earlier pieces (or the input) it reads, every one over a stop edge.
      gives: its nodes that later pieces read (what it hands on).
    """

    name: str
    nodes: tuple[str, ...]
    losses: tuple[str, ...]
    reads: tuple[str, ...]
    gives: tuple[str, ...]


def plan_pieces(g: Graph, algo: Algorithm) -> tuple[Piece, ...]:
    """The pieces of ``g`` (stop edges already marked) under ``algo``; one piece for a
    non-greedy algorithm or a graph the stop edges do not cut."""
    order = {n: i for i, n in enumerate(g.topo())}
    members = [n for n in order if g.node(n).role in ("op", "head", "loss")]
    if not algo.greedy:
        return (_piece(g, order, set(members), (), "whole"),)
    carry = nx.Graph()
    carry.add_nodes_from(members)
    for u, v in g.g.edges:
        if u in carry and v in carry and (not g.edge(u, v).stop_gradient
                                          or g.node(v).role == "loss"):
            carry.add_edge(u, v)  # a loss reads its logits in the same piece, cut or not
    comps = [frozenset(c) for c in nx.connected_components(carry)]
    comp_of = {n: i for i, c in enumerate(comps) for n in c}
    reads = nx.DiGraph()
    reads.add_nodes_from(range(len(comps)))
    for u, v in g.g.edges:
        if u in comp_of and v in comp_of and comp_of[u] != comp_of[v]:
            reads.add_edge(comp_of[u], comp_of[v])
    merged = nx.condensation(reads)  # pieces reading each other both ways become one
    first = {m: min(order[n] for c in merged.nodes[m]["members"] for n in comps[c])
             for m in merged}
    groups = [set().union(*(comps[c] for c in merged.nodes[m]["members"]))
              for m in nx.lexicographical_topological_sort(merged, key=first.__getitem__)]
    if len(groups) == 1:
        return (_piece(g, order, groups[0], (), "whole"),)
    pieces, later = [], [set().union(*groups[i + 1:]) for i in range(len(groups))]
    for i, nodes in enumerate(groups):
        pieces.append(_piece(g, order, nodes, later[i]))
    return tuple(pieces)


def _piece(g: Graph, order: dict[str, int], nodes: set[str], later, name: str = "") -> Piece:
    ops = sorted((n for n in nodes if g.node(n).role != "loss"), key=order.__getitem__)
    losses = tuple(sorted((n for n in nodes if g.node(n).role == "loss"), key=order.__getitem__))
    reads = sorted({u for n in ops for u in g.inputs(n) if u not in nodes}, key=order.__getitem__)
    gives = sorted({n for n in ops for v in g.g.successors(n) if v in later}, key=order.__getitem__)
    blocks = list(dict.fromkeys(g.node(n).block for n in ops
                                if g.node(n).role == "op" and g.node(n).block))
    name = name or ", ".join(blocks) or ", ".join(g.losses[l].name for l in losses) or ops[0]
    return Piece(name, tuple(ops), losses, tuple(reads), tuple(gives))
