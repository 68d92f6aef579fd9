"""The credit map: which loss replicas every perturbed unit and weight answers to.

A replicated local loss gives one directional derivative per replica
``d[n, p, g]`` (example, patch, channel group). Replica ``(n, p, g)`` reads the
head's input ``h`` only through its own slice ``h[n, p, g]`` (REFERENCE §3), so a
unit answers to exactly the replicas whose slice its value reaches. The map is
computed once per plan from the op table's declared mixing facts
(:attr:`fgc.graph.ops.OpDef.mixes`) along every gradient-carrying path from the
unit to the loss; the estimators consume it and derive nothing themselves.

Why it is unbiased: with activity noise ``z`` on unit ``u``, ``E[d_r z_u] =
∂L_r/∂u`` for every replica ``r``, and the unit's true gradient is
``Σ_r ∂L_r/∂u`` over the replicas it reaches. Crediting the sum over every replica
that *can* be reached (its own patch unless some op on a path mixes positions, its
own group unless some op mixes across groups of the loss, its own example unless
some op uses batch statistics or the loss kind couples examples,
:meth:`fgc.graph.loss_kinds.LossKind.couples_examples`) is therefore unbiased; crediting a replica it cannot
reach only adds a zero-mean term (variance). So the rule errs one way: an op whose
facts are unknown counts as mixing every axis.

``ignore_norm`` (Ren et al.'s released code) treats normalisation layers as if they
kept every unit apart: biased by design, with less variance; ``fgc verify``
reports the bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax.numpy as jnp
import networkx as nx

from fgc.graph.ir import Graph, LossInfo
from fgc.graph.loss_kinds import LOSS_KINDS
from fgc.graph.ops import OPS, group_count

RULES = ("exact", "ignore_norm")


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

    def describe(self) -> str:
        kept = [a for a, k in (("example", self.examples), ("patch", self.patches),
                               ("group", bool(self.groups))) if k]
        return f"{self.loss.removeprefix('loss:')}: own " + ("/".join(kept) or "nothing") + \
            (f" (of {self.groups})" if self.groups else "")


@dataclass(frozen=True)
class CreditMap:
    """The credit of every perturbation site and every backbone parameter node.

    Attributes:
      rule: ``exact`` or ``ignore_norm``.
      sites: site id → the credit of every loss its noise reaches (empty: a dead
        site, whose noise reaches no loss).
      weights: parameter node → the credit of every loss its output reaches.
      shared: head parameter node → the number of replicas that share it: the
        ops after a replicated head's ``mean`` see every replica's full pooled
        value, so the replicated objective counts their gradient that many times.
      masks: site → the ReLU every path from it passes first (directly or after a
        residual ``add``), whose post-activation mask is known to zero the site's
        true gradient; None where there is no such ReLU.
      owners: site → the parameter nodes upstream of it reached without crossing
        another site or a stop edge: the layers that learn from its estimate.
    """

    rule: str
    sites: dict[str, tuple[Credit, ...]] = field(default_factory=dict)
    weights: dict[str, tuple[Credit, ...]] = field(default_factory=dict)
    shared: dict[str, int] = field(default_factory=dict)
    masks: dict[str, str | None] = field(default_factory=dict)
    owners: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def dead_sites(self) -> tuple[str, ...]:
        return tuple(s for s, c in self.sites.items() if not c)

    def table(self) -> list[tuple[str, str, str]]:
        """``(node, kind, credit)`` rows for ``fgc check --credit``."""
        rows = [(s, "site", "; ".join(c.describe() for c in cs) or "dead: reaches no loss")
                for s, cs in self.sites.items()]
        rows += [(n, "weights", "; ".join(c.describe() for c in cs) or "reaches no loss")
                 for n, cs in self.weights.items()]
        rows += [(n, "head", f"shared by {r} replicas: gradient scaled by 1/{r}")
                 for n, r in self.shared.items()]
        return rows


def credit_table(plan) -> str:
    """The plan's credit map as text (``fgc check --credit``), one row per site, weight
    and shared head, under every credit rule that differs from ``exact``."""
    exact = plan.credit_map("exact")
    rows = exact.table()
    loose = {n: c for n, _, c in plan.credit_map("ignore_norm").table()}
    w = max([len(n) for n, _, _ in rows] + [4])
    out = [f"credit map of `{plan.graph.meta.get('algorithm')}` (exact rule; "
           "`ignore_norm:` where Ren et al.'s rule differs)",
           f"  {'node':<{w}}  {'kind':<7}  answers to"]
    for n, kind, c in rows:
        out.append(f"  {n:<{w}}  {kind:<7}  {c}")
        if loose.get(n, c) != c:
            out.append(f"  {'':<{w}}  {'':<7}  ignore_norm: {loose[n]}")
    dead = exact.dead_sites
    if dead:
        out.append(f"  dead sites (noise reaches no loss): {', '.join(dead)}")
    return "\n".join(out)


def credit_map(graph: Graph, rule: str = "exact") -> CreditMap:
    """Computes the credit map of a planned graph (its stop-gradient edges marked)."""
    if rule not in RULES:
        raise ValueError(f"unknown credit rule `{rule}` (rules: {', '.join(RULES)})")
    flow = _gradient_graph(graph)
    targets = {lid: _targets(graph, loss) for lid, loss in graph.losses.items()}
    sites, weights = {}, {}
    for nid in graph.topo():
        d = graph.node(nid)
        if d.role != "op":
            continue
        if d.kind == "perturb":
            sites[nid] = _credits(graph, flow, nid, targets, rule)
        elif d.params:
            weights[nid] = _credits(graph, flow, nid, targets, rule)
    return CreditMap(rule, sites, weights, _shared_heads(graph),
                     {s: _relu_after(graph, flow, s) for s in sites},
                     {s: frozenset(_segment_owners(graph, flow, s)) for s in sites})


def credit_of(graph: Graph, nid: str, rule: str = "exact") -> tuple[Credit, ...]:
    """The credit of any node's output units under ``rule`` (the map holds the sites and
    weights; tools such as the graph page also ask about other nodes)."""
    targets = {lid: _targets(graph, loss) for lid, loss in graph.losses.items()}
    return _credits(graph, _gradient_graph(graph), nid, targets, rule)


def _gradient_graph(graph: Graph) -> nx.DiGraph:
    """The edges that carry gradients and tangents (stop-gradient edges removed)."""
    flow = nx.DiGraph()
    flow.add_nodes_from(graph.g.nodes)
    flow.add_edges_from((u, v) for u, v in graph.g.edges if not graph.edge(u, v).stop_gradient)
    return flow


def _targets(graph: Graph, loss: LossInfo) -> tuple[str, str]:
    """``(h, loss)``: the value whose slices the replicas read (the input of a
    replicated head's ``mean``; the loss itself otherwise) and the loss node."""
    if loss.replicate:
        kinds = [graph.node(h).kind for h in loss.head_nodes]
        mean = loss.head_nodes[kinds.index("mean")]
        return graph.inputs(mean)[0], loss.id
    return loss.id, loss.id


def _between(flow: nx.DiGraph, start: str, target: str) -> set[str] | None:
    """Nodes on some gradient-carrying path from ``start`` to ``target`` (both
    excluded; ``target`` included when it is an op, since the slice is its output),
    or None when there is no such path."""
    if start == target:
        return set()
    down = nx.descendants(flow, start)
    if target not in down:
        return None
    return (down & nx.ancestors(flow, target)) | {target}


def _credits(graph: Graph, flow: nx.DiGraph, nid: str, targets: dict,
             rule: str) -> tuple[Credit, ...]:
    shape = graph.node(nid).shape
    out = []
    for lid, loss in graph.losses.items():
        h, node = targets[lid]
        to_loss = _between(flow, nid, node)
        if to_loss is None:
            continue
        to_h = _between(flow, nid, h)
        if to_h is None:  # reaches the loss only past the slices (cannot happen in a checked head)
            to_h = to_loss
        facts = _facts(graph, to_h, rule)
        # A loss that couples examples (InfoNCE without stopped keys) carries a unit's
        # change into every example's loss derivative, as batch statistics do.
        examples = not (_facts(graph, to_loss, rule)[0]
                        or LOSS_KINDS[loss.kind].couples_examples(loss.options))
        h_shape = graph.node(h).shape
        keep_p = ("patches" in loss.replicate and not facts[1] and len(shape) >= 2
                  and h_shape is not None and tuple(shape[:-1]) == tuple(h_shape[:-1]))
        g = loss.groups if "groups" in loss.replicate else 0
        kept = facts[2]
        keep_g = bool(g) and kept is not None and (kept == 0 or kept % g == 0) \
            and shape[-1] % g == 0
        out.append(Credit(lid, keep_p, g if keep_g else 0, examples))
    return tuple(out)


def _facts(graph: Graph, nodes: set[str], rule: str) -> tuple[bool, bool, int | None]:
    """``(mixes_examples, mixes_positions, groups_kept)`` over ``nodes``: the finest
    group count every op keeps apart (None: some op mixes all channels, 0: no op
    touches channels across units)."""
    ex = pos = False
    groups = 0
    for n in nodes:
        d = graph.node(n)
        if d.role not in ("op", "head"):
            continue
        op = OPS.get(d.kind)
        if op is None:  # an op with no facts: assume it mixes everything
            return True, True, None
        if rule == "ignore_norm" and op.role == "norm":
            continue
        ex |= op.mixes_examples
        pos |= op.mixes_patches
        g = group_count(op, d.attrs)
        if op.mixes_channels or g == 1:
            groups = None
        elif g and groups is not None:
            groups = g if groups == 0 else math.gcd(groups, g)
    return ex, pos, groups


def _relu_after(graph: Graph, flow: nx.DiGraph, site: str) -> str | None:
    node = site
    for _ in range(2):
        nxt = list(graph.g.successors(node))
        if len(nxt) != 1 or not flow.has_edge(node, nxt[0]):
            return None
        kind = graph.node(nxt[0]).kind
        if kind == "relu":
            return nxt[0]
        if kind != "add":
            return None
        node = nxt[0]
    return None


def _segment_owners(graph: Graph, flow: nx.DiGraph, site: str) -> set[str]:
    owners, seen, todo = set(), {site}, [site]
    while todo:
        v = todo.pop()
        for u in flow.predecessors(v):
            if u in seen:
                continue
            seen.add(u)
            du = graph.node(u)
            if du.role != "op" or du.kind == "perturb":
                continue
            if du.params:
                owners.add(u)
            todo.append(u)
    return owners


def _shared_heads(graph: Graph) -> dict[str, int]:
    """Head parameter nodes after a replicated head's ``mean``, with the replica count."""
    out = {}
    for loss in graph.losses.values():
        if not loss.replicate:
            continue
        kinds = [graph.node(h).kind for h in loss.head_nodes]
        h = graph.node(graph.inputs(loss.head_nodes[kinds.index("mean")])[0])
        positions = math.prod(h.shape[:-1]) if "patches" in loss.replicate else 1
        replicas = positions * (loss.groups if "groups" in loss.replicate else 1)
        for n in loss.head_nodes[kinds.index("mean") + 1:]:
            if graph.node(n).params and replicas > 1:
                out[n] = replicas
    return out


# --- applying a credit to derivatives ---------------------------------------------------------

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
