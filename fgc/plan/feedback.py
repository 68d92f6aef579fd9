"""Which nodes need fixed random feedback matrices, and where DFA's error enters.

The plan decides it once (:func:`feedback_needs`); lowering creates the matrices as
model buffers (:class:`fgc.lowering.modules.Feedback`) and the update rules of
:mod:`fgc.learning.feedback` read them. Nothing downstream re-derives these facts.

- ``feedback_alignment`` (FA): every weight layer (op role ``linear``: dense,
  linear, group_linear, token_mix, conv) of a group using it sends its input
  cotangent back through a fixed random matrix ``B`` shaped like its weight, in
  place of ``Wᵀ``. Heads are exact (they learn by their exact gradient and hand the
  backbone the exact gradient with respect to their input).
- ``direct_feedback_alignment`` (DFA): the final loss's output error ``e`` (its
  gradient with respect to the final logits) reaches each weight layer's *output
  point* through that point's own matrix ``B`` of shape ``[classes, C]`` (shared
  by the positions, like a pooled head), and the layer's weight gradient follows
  from its local backward. The output point of a weight layer is the end of its
  segment: following the one successor through parameter-free backbone ops up to
  and including the first activation, stopping before a branch, another weight
  layer or a loss head. Several layers ending at the same point share its matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from fgc.graph.ir import Graph
from fgc.graph.ops import OPS

__all__ = ["FeedbackNeed", "feedback_needs", "output_point", "segment"]

FA, DFA = "feedback_alignment", "direct_feedback_alignment"


@dataclass(frozen=True)
class FeedbackNeed:
    """One feedback matrix the lowering must create.

    Attributes:
      node: the node it belongs to: the weight layer (FA), the output point (DFA).
      kind: ``feedback_alignment`` or ``direct_feedback_alignment``.
      layers: the weight layers that learn through it (FA: ``(node,)``).
      scale: its std relative to the default (the estimator's ``scale``).
      classes: DFA only: the final logits' width (the matrix is ``[classes, C]``).
    """

    node: str
    kind: str
    layers: tuple[str, ...]
    scale: float = 1.0
    classes: int = 0


def _is_weight_layer(g: Graph, nid: str) -> bool:
    d = g.node(nid)
    return d.role == "op" and OPS[d.kind].role == "linear"


def segment(g: Graph, nid: str) -> list[str]:
    """Weight layer ``nid``'s DFA segment, in order: the layer, then the parameter-free
    ops (norms with parameters included) its single successor chain passes, up to its
    output point (the last entry; see the module docstring)."""
    chain = [nid]
    while True:
        cur = chain[-1]
        if cur != nid and OPS[g.node(cur).kind].role == "act":
            return chain
        succ = list(g.g.successors(cur))
        if len(succ) != 1:
            return chain
        nxt = succ[0]
        d = g.node(nxt)
        if d.role != "op" or g.edge(cur, nxt).stop_gradient \
                or OPS[d.kind].role in ("linear", "grad"):
            return chain
        chain.append(nxt)


def output_point(g: Graph, nid: str) -> str:
    """The node where DFA's projected error enters weight layer ``nid``'s segment."""
    return segment(g, nid)[-1]


def feedback_needs(g: Graph, estimator_of: dict) -> tuple[FeedbackNeed, ...]:
    """The matrices a plan needs: ``estimator_of`` maps each parameter node to its
    estimator. Returned in topological order of their nodes."""
    order = {n: i for i, n in enumerate(g.topo())}
    final = [l for l in g.losses.values() if l.final]
    classes = 0
    if final:
        logits = final[0].head_nodes[-1] if final[0].head_nodes else final[0].source
        classes = int(g.node(logits).shape[-1])
    out: dict[str, FeedbackNeed] = {}
    for n in sorted(estimator_of, key=order.__getitem__):
        est = estimator_of[n]
        if est.kind not in (FA, DFA) or not _is_weight_layer(g, n):
            continue
        if est.kind == FA:
            out[n] = FeedbackNeed(n, FA, (n,), est.scale)
            continue
        at = output_point(g, n)
        prev = out.get(at)
        layers = (prev.layers if prev else ()) + (n,)
        out[at] = FeedbackNeed(at, DFA, layers, est.scale, classes)
    return tuple(sorted(out.values(), key=lambda f: order[f.node]))
