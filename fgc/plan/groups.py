"""Parameter groups: which group owns each parameterised node of a checked graph.

Every graph has default groups (``backbone``, the local heads, the final heads); a spec's
``group`` sections claim nodes from them by block name, block instance, ``heads(LOSS)``
or the default selectors. :func:`assign_groups` decides the owner of every node once,
reporting selectors that match nothing and nodes two groups claim.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fgc.front import syntax as S
from fgc.front.config import Estimator, ParamGroup
from fgc.graph.build import Diags, suggest
from fgc.graph.ir import Graph

__all__ = ["FINAL_HEADS", "LOCAL_HEADS", "assign_groups", "default_groups"]


# Selectors of every local head and of every head on `output`. A user writes them
# `heads(local)` and `heads(final)`, which mean a loss of that name if there is one
# (`_resolve`); these spellings cannot be a name, so the default groups keep meaning them.
LOCAL_HEADS = "<local heads>"
FINAL_HEADS = "<final heads>"


def default_groups(g: Graph) -> list[ParamGroup]:
    """Backbone, local heads (exact gradient) and the readout head (lr × 0.1)."""
    groups = [ParamGroup("backbone", ("network",))]
    if any(not l.final for l in g.losses.values()):
        groups.append(ParamGroup("heads", (LOCAL_HEADS,), estimator=Estimator("backprop")))
    if any(l.final for l in g.losses.values()):
        groups.append(ParamGroup("readout", (FINAL_HEADS,), lr_scale=0.1,
                                 estimator=Estimator("backprop")))
    return groups


def _resolve(sel: str, loss_names: set[str]) -> str:
    """``heads(NAME)`` selects the loss named NAME; only when no loss has that name do
    ``heads(local)`` and ``heads(final)`` mean every local head and every final head."""
    if sel.startswith("heads:") and sel[6:] not in loss_names:
        return {"heads:local": LOCAL_HEADS, "heads:final": FINAL_HEADS}.get(sel, sel)
    return sel


def _show(sel) -> str:
    """A selector as the user writes it."""
    if isinstance(sel, (S.Index, _Instances)):
        from fgc.graph.instances import show
        return show(sel if isinstance(sel, S.Index) else sel.index)
    return f"heads({sel[6:]})" if sel.startswith("heads:") else sel


@dataclass(frozen=True)
class _Instances:
    """A ``blocks[a:b]`` selector resolved against the graph: the instances it picks."""

    index: S.Index
    names: frozenset


def _instances(g: Graph, sel: S.Index, grp: ParamGroup, d: Diags) -> _Instances | None:
    """The block instances ``sel`` picks (:mod:`fgc.graph.instances`), or a located E201,
    E206 or E208."""
    from fgc.graph import instances as I
    insts = list(g.meta.get("blocks", []))
    defs = {i.rsplit(".", 1)[0] for i in insts}
    span = sel.span or grp.span
    if sel.base != "blocks" and sel.base not in defs:
        d.add("E201", f"group `{grp.name}` indexes `{sel.base}`, which is no block of the network",
              span, suggest(sel.base, ["blocks", *sorted(defs)]) or "index `blocks` or a block name")
        return None
    pool = insts if sel.base == "blocks" else [i for i in insts if i.rsplit(".", 1)[0] == sel.base]
    try:
        return _Instances(sel, frozenset(I.select(sel, pool, I.bound(sel.start), I.bound(sel.stop))))
    except I.IndexProblem as e:
        d.add(e.code, f"group `{grp.name}`: {e}", span, e.hint)
        return None


def _selects(g: Graph, sel, nid: str) -> bool | None:
    d = g.node(nid)
    if isinstance(sel, _Instances):
        return d.role == "op" and d.block in sel.names
    if sel in ("network", "backbone"):
        return d.role == "op"
    if sel == "blocks":
        return d.role == "op" and d.block is not None
    if sel == "heads":
        return d.role == "head"
    if sel == LOCAL_HEADS:
        return d.role == "head" and not g.losses[d.loss].final
    if sel == FINAL_HEADS:
        return d.role == "head" and g.losses[d.loss].final
    if sel.startswith("heads:"):
        return d.role == "head" and g.losses[d.loss].name == sel[6:]
    return d.role == "op" and d.block_def == sel


def assign_groups(g: Graph, user: list[ParamGroup], d: Diags):
    owners = [n for n in g.topo() if g.node(n).params]
    groups = {grp.name: grp for grp in default_groups(g)}
    assignment: dict[str, str] = {}
    for n in owners:
        for grp in groups.values():
            if any(_selects(g, s, n) for s in grp.select):
                assignment[n] = grp.name
                break
    if not user:
        return groups, assignment
    loss_names = {l.name for l in g.losses.values()}
    blocks = {g.node(n).block_def for n in g.g if g.node(n).block_def}
    claimed: dict[str, str] = {}
    defaults = set(groups)
    for grp in user:
        select = tuple(_instances(g, s, grp, d) if isinstance(s, S.Index) else _resolve(s, loss_names)
                       for s in grp.select)
        if any(s is None for s in select):  # an index out of range: reported
            continue
        for s in select:
            if isinstance(s, _Instances):
                continue
            known = s in ("network", "backbone", "blocks", "heads", LOCAL_HEADS, FINAL_HEADS) \
                or s in blocks or s.startswith("heads:") and s[6:] in loss_names
            if not known:
                d.add("E501", f"group `{grp.name}` selects `{_show(s)}`, which matches nothing",
                      grp.span,
                      suggest(_show(s), ["blocks", "heads", *blocks,
                                         *(f"heads({l})" for l in loss_names)])
                      or "select blocks, heads, heads(LOSS) or a block name")
        forward_heads = False
        for n in owners:
            if any(_selects(g, s, n) for s in select):
                if n in claimed:
                    d.add("E502", f"parameters of `{n}` are in groups `{claimed[n]}` and "
                          f"`{grp.name}`", grp.span, "each parameter belongs to one group")
                    continue
                claimed[n] = grp.name
                forward_heads |= g.node(n).role == "head" and grp.estimator is not None \
                    and grp.estimator.kind != "backprop"
        if forward_heads:
            d.add("E503", f"group `{grp.name}` gives head parameters a forward-gradient "
                  "estimator", grp.span, "heads learn by their exact local gradient")
        groups[grp.name] = grp
    assignment.update(claimed)
    for grp in user:
        members = [n for n in owners if assignment.get(n) == grp.name]
        heads = [n for n in members if g.node(n).role == "head"]
        ops = [n for n in members if g.node(n).role != "head"]
        if heads and ops:
            also = (f"; `{grp.name}` also keeps the parameters of the default group of that name"
                    if grp.name in defaults else "")
            d.add("E508", f"group `{grp.name}` mixes head parameters (`{heads[0]}`) and backbone "
                  f"parameters (`{ops[0]}`)", grp.span,
                  "split it in two: heads learn by their exact gradient, the backbone by the "
                  f"algorithm's estimator{also}")
        elif heads and grp.estimator is None:
            groups[grp.name] = replace(grp, estimator=Estimator("backprop"))
    used = set(assignment.values())
    groups = {k: v for k, v in groups.items() if k in used or k in {u.name for u in user}}
    return groups, assignment
