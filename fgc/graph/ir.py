"""The graph IR: a networkx DiGraph whose nodes and edges carry typed payloads.

Node ids are readable paths: ``input``, ``mixer.2/dense.1`` (op 1 of the second
instance of block ``mixer``), ``loss:local@mixer.2/linear.2`` (a head op),
``loss:local@mixer.2`` (the loss itself).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import networkx as nx

from fgc.errors import Span

Shape = tuple[int, ...]


@dataclass
class NodeData:
    """Payload of one graph node.

    Attributes:
      kind: op name (``dense``, ``perturb`` ...), ``input`` or ``loss``.
      role: ``input``, ``op`` (backbone), ``head`` (part of a loss head) or ``loss``.
      attrs: the op's evaluated arguments.
      block: block instance (``mixer.2``) or None for network-level ops.
      block_def: the block definition's name.
      loss: for head ops and loss nodes, the loss instance id.
      shape: per-example output shape (filled by shape inference).
      params: parameter name → shape (filled by shape inference).
      span: where in the spec this node was written.
    """

    kind: str
    role: str = "op"
    attrs: dict = field(default_factory=dict)
    block: str | None = None
    block_def: str | None = None
    loss: str | None = None
    shape: Shape | None = None
    params: dict[str, Shape] = field(default_factory=dict)
    span: Span | None = None

    @property
    def num_params(self) -> int:
        total = 0
        for s in self.params.values():
            n = 1
            for d in s:
                n *= d
            total += n
        return total


@dataclass
class EdgeData:
    """Payload of one data edge: which operand it feeds, and whether it stops gradients."""

    port: int = 0
    stop_gradient: bool = False
    why: str | None = None  # "greedy", "readout", "spec" when stop_gradient


@dataclass
class LossInfo:
    """One loss instance: a head applied to a value, replicated or not."""

    id: str
    name: str  # the declared loss name, e.g. "local"
    kind: str  # "xent"
    source: str  # node id the head reads
    head_nodes: list[str]
    final: bool  # reads the network output
    replicate: tuple[str, ...] = ()  # subset of ("patches", "groups")
    groups: int = 1
    patches: int = 1
    span: Span | None = None
    # a final loss that is also the local loss of the block it reads (`local = true`):
    # under a local target it trains that block instead of reading a stop-gradiented input
    also_local: bool = False
    options: dict = field(default_factory=dict)  # the kind's own options, defaults filled in

    @property
    def replicas(self) -> int:
        return (self.patches if "patches" in self.replicate else 1) * (
            self.groups if "groups" in self.replicate else 1)


class Graph:
    """A checked network: dataflow graph plus losses and metadata."""

    def __init__(self, g: nx.DiGraph | None = None, losses: dict | None = None,
                 meta: dict | None = None):
        self.g = g if g is not None else nx.DiGraph()
        self.losses: dict[str, LossInfo] = losses or {}
        self.meta: dict = meta or {}
        # nodes whose pipe stopped at a stage that failed to build: checks that would only
        # report the consequence (a site feeding nothing) stay quiet about them
        self.cut: set[str] = set()

    # access
    def node(self, nid: str) -> NodeData:
        return self.g.nodes[nid]["data"]

    def edge(self, u: str, v: str) -> EdgeData:
        return self.g.edges[u, v]["data"]

    def inputs(self, nid: str) -> list[str]:
        """Predecessors ordered by port."""
        preds = list(self.g.predecessors(nid))
        return sorted(preds, key=lambda u: self.edge(u, nid).port)

    def topo(self) -> list[str]:
        return list(nx.lexicographical_topological_sort(self.g, key=self._order))

    def _order(self, nid: str):
        return self.g.nodes[nid].get("order", 0)

    def add_node(self, nid: str, data: NodeData) -> None:
        self.g.add_node(nid, data=data, order=self.g.number_of_nodes())

    def add_edge(self, u: str, v: str, data: EdgeData | None = None) -> None:
        self.g.add_edge(u, v, data=data or EdgeData())

    @property
    def output(self) -> str:
        return self.meta["output"]

    @property
    def blocks(self) -> list[str]:
        """Block instances in network order."""
        return list(self.meta.get("blocks", []))

    def block_nodes(self, block: str) -> list[str]:
        return [n for n in self.topo() if self.node(n).block == block and self.node(n).role == "op"]

    def copy(self) -> "Graph":
        g = nx.DiGraph()
        for n, d in self.g.nodes(data=True):
            g.add_node(n, data=replace(d["data"], attrs=dict(d["data"].attrs),
                                       params=dict(d["data"].params)), order=d["order"])
        for u, v, d in self.g.edges(data=True):
            g.add_edge(u, v, data=replace(d["data"]))
        return Graph(g, {k: replace(v) for k, v in self.losses.items()}, json.loads(json.dumps(self.meta)))

    def num_params(self) -> int:
        return sum(self.node(n).num_params for n in self.g)

    # serialisation
    def to_json(self) -> dict:
        def span(s):
            return None if s is None else asdict(s)

        nodes = []
        for n in sorted(self.g, key=self._order):
            d = self.node(n)
            nodes.append({"id": n, **{k: v for k, v in asdict(d).items() if k != "span"},
                          "shape": None if d.shape is None else list(d.shape),
                          "params": {k: list(v) for k, v in d.params.items()},
                          "span": span(d.span)})
        edges = [{"src": u, "dst": v, **asdict(self.edge(u, v))} for u, v in self.g.edges]
        edges.sort(key=lambda e: (self._order(e["dst"]), e["port"]))
        losses = [{**{k: v for k, v in asdict(l).items() if k != "span"}, "span": span(l.span)}
                  for l in self.losses.values()]
        return {"version": 1, "meta": self.meta, "nodes": nodes, "edges": edges, "losses": losses}

    @classmethod
    def from_json(cls, obj: dict) -> "Graph":
        def span(s):
            return None if s is None else Span(**s)

        g = cls(meta=obj["meta"])
        for nd in obj["nodes"]:
            nd = dict(nd)
            nid = nd.pop("id")
            nd["shape"] = None if nd["shape"] is None else tuple(nd["shape"])
            nd["params"] = {k: tuple(v) for k, v in nd["params"].items()}
            nd["span"] = span(nd["span"])
            g.add_node(nid, NodeData(**nd))
        for e in obj["edges"]:
            e = dict(e)
            g.add_edge(e.pop("src"), e.pop("dst"), EdgeData(**e))
        for l in obj["losses"]:
            l = dict(l)
            l["span"] = span(l["span"])
            l["replicate"] = tuple(l["replicate"])
            g.losses[l["id"]] = LossInfo(**l)
        return g

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and self.to_json() == other.to_json()
