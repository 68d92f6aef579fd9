"""Where every projected parameter's gradient target and guess come from ([F], REFERENCE §7).

A ``project(...)`` estimator (:mod:`fgc.front.projection`) learns block by block: each
block instance is a *unit* whose output value ``a`` is where the activity-space
projection happens, and whose parameter nodes (those of the block, plus network-level
layers before it) learn from it. This module decides, once per plan, for every unit:

- the target losses (``global``: the final loss; ``local``: the block's own local
  losses; ``above``: the local losses of the next block instance, reached through it),
- the guess and the losses it is the gradient of (``local``, ``ntk`` and ``fixed``: the
  block's own local losses, through the real, a re-drawn or a fixed auxiliary head;
  ``above``: the next block's; ``global``: the final loss; ``random``: none),
- whether the target pass mixes examples (batch statistics between ``a`` and the
  target), so that a per-example ``⟨G, G̃⟩`` needs one jvp per example,
- the op nodes of its *segment*: where the local backward of ``ĝ`` runs.

Decisions of the paper that are made here: the last block learns by its true gradient
under a global target (its target is the final loss, one head away: the plan sets its
guess to ``global``); the block above the last one is the readout (``above`` of the last
block is the final loss).

:mod:`fgc.learning.projection` consumes the units and derives nothing from the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from fgc.graph.build import Diags
from fgc.graph.ir import Graph
from fgc.plan.credit import credit_of

__all__ = ["Unit", "plan_units"]


@dataclass(frozen=True)
class Unit:
    """One block instance as a projection unit.

    Attributes:
      block: the block instance (``layer.2``).
      output: the node whose value is the block's output (the activity space).
      params: the parameter nodes that learn from this unit.
      segment: the op nodes between the previous unit's output and ``output``: the
        local backward of ``ĝ`` stays inside them.
      target: ``global``, ``local`` or ``above``.
      target_losses: loss ids whose sum is the target.
      guess: ``random``, ``local``, ``ntk``, ``fixed``, ``above`` or ``global``.
      guess_losses: loss ids whose sum's gradient is the guess (empty for random).
      coupled: the target pass from ``output`` mixes examples (batch statistics in
        train mode).
      coupled_params: the parameter nodes whose target pass (from their own output)
        mixes examples: per-sample weight projections need one jvp per example there.
      note: why the plan changed the spec's guess here ('' when it did not).
    """

    block: str
    output: str
    params: tuple[str, ...]
    segment: tuple[str, ...]
    target: str
    target_losses: tuple[str, ...]
    guess: str
    guess_losses: tuple[str, ...]
    coupled: bool
    coupled_params: tuple[str, ...] = ()
    note: str = ""

    @property
    def aux_heads(self) -> tuple[str, ...]:
        """The losses whose heads a ``ntk`` or ``fixed`` guess replaces."""
        return self.guess_losses if self.guess in ("ntk", "fixed") else ()


def _outputs(g: Graph) -> dict[str, str | None]:
    """Block instance → its output node (the one value leaving it), None if not one."""
    out = {}
    for b in g.blocks:
        nodes = set(g.block_nodes(b))
        leaving = {n for n in nodes if n == g.output or any(
            g.node(v).role == "op" and g.node(v).block != b for v in g.g.successors(n))}
        if not leaving:  # the block feeds only losses
            leaving = {n for n in nodes if any(g.node(v).role in ("head", "loss")
                                               for v in g.g.successors(n))}
        out[b] = next(iter(leaving)) if len(leaving) == 1 else None
    return out


def _local_losses(g: Graph, node: str) -> tuple[str, ...]:
    return tuple(lid for lid, l in g.losses.items() if not l.final and l.source == node)


def plan_units(g: Graph, est, nodes: set[str], d: Diags, span, name: str) -> tuple[Unit, ...]:
    """The units of ``est`` for the parameter nodes ``nodes``; problems go to ``d`` (E511)."""
    outputs = _outputs(g)
    blocks = g.blocks
    finals = tuple(lid for lid, l in g.losses.items() if l.final)
    flow = nx.DiGraph()
    flow.add_nodes_from(g.g.nodes)
    flow.add_edges_from((u, v) for u, v in g.g.edges if not g.edge(u, v).stop_gradient)
    order = g.topo()
    # every parameter node's unit: its block, or for a network-level layer the first
    # block instance its output flows into
    member: dict[str, str] = {}
    for n in order:
        dn = g.node(n)
        if dn.role != "op":
            continue
        if dn.block:
            member[n] = dn.block
            continue
        down = nx.descendants(g.g, n)
        first = next((b for b in blocks if any(g.node(m).block == b for m in down)), None)
        if first is not None:
            member[n] = first
    units = []
    for n in sorted(nodes):
        if n not in member:
            d.add("E511", f"`{n}` learns by `{name}`'s projection, but it is in no block and "
                  "feeds none: a projection needs a block output to project at", g.node(n).span,
                  "put the layer inside a block, or give its group `estimator = backprop`")
    for i, b in enumerate(blocks):
        params = tuple(n for n in order if n in nodes and member.get(n) == b)
        if not params:
            continue
        out = outputs[b]
        if out is None:
            d.add("E511", f"block instance `{b}` has no single output value to project at",
                  g.node(params[0]).span, "a block under project(...) ends in one `out` value")
            continue
        last = i == len(blocks) - 1 or out == g.output
        nxt = None if last else outputs[blocks[i + 1]]
        above = (_local_losses(g, nxt) if nxt else ()) or finals

        def losses_of(kind, role):
            if kind == "global":
                return finals
            if kind == "local":
                return _local_losses(g, out)
            if kind == "above":
                return above
            return ()

        target, guess, note = est.target, est.guess, ""
        if target == "global" and last and guess != "global":
            guess, note = "global", "the last block learns by its true gradient"
        if target == "above" and last:
            note = "the block above the last one is the readout"
        tl = losses_of(target, "target")
        gl = losses_of(guess if guess in ("global", "above") else
                       "local" if guess in ("local", "ntk", "fixed") else "", "guess")
        for kind, losses, role in ((target, tl, "target"), (guess, gl, "guess")):
            if kind == "random":
                continue
            if not losses:
                what = {"local": "a local loss on it", "global": "a loss on `output`",
                        "above": "a local loss on the next block, or a loss on `output`"}
                kw = "local" if kind in ("ntk", "fixed") else kind
                d.add("E511", f"{role} `{kind}` of `{name}` needs {what[kw]}, but block "
                      f"instance `{b}` has none", span,
                      "add e.g. `loss local = aux on blocks`" if kw == "local" else
                      "add `loss final = readout on output`")
                continue
            cut = [l for l in losses if not nx.has_path(flow, out, l)]
            if cut:
                d.add("E511", f"{role} `{kind}` of `{name}` at `{b}` reads loss `{cut[0]}`, "
                      f"but a stop-gradient edge cuts `{out}` off it", span,
                      "remove the `stopgrad` on the way, or choose another target or guess")
        def mixes(node):
            return any(not c.examples for c in credit_of(g, node) if c.loss in tl)

        segment = tuple(n for n in order if member.get(n) == b)
        units.append(Unit(b, out, params, segment, target, tl, guess, gl, mixes(out),
                          tuple(n for n in params if mixes(n)), note))
    return tuple(units)
