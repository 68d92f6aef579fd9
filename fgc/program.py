"""A checked spec, and the plan an algorithm makes of it.

``load(path)`` parses, builds and checks a spec and raises one
:class:`~fgc.errors.SpecError` holding every problem. ``Program.plan(name)``
applies an algorithm: it marks stop-gradient edges, which losses train the
backbone, which perturbation sites are live, and which estimator and learning
rate every parameter group uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from fgc import syntax as S
from fgc.build import Diags, suggest
from fgc.check import build_and_check
from fgc.config import (Algorithm, Estimator, ParamGroup, TrainConfig, algorithm_from,
                        group_from, presets, train_from)
from fgc.errors import Diagnostic, SpecError
from fgc.ir import Graph
from fgc.parse import parse, parse_file


@dataclass(frozen=True)
class Plan:
    """A graph with an algorithm applied, ready to lower."""

    graph: Graph
    algorithm: Algorithm
    groups: dict[str, ParamGroup]  # group name -> group
    assignment: dict[str, str]  # node id -> group name (nodes with parameters)
    train: TrainConfig

    def estimator_of(self, group: str) -> Estimator:
        g = self.groups[group]
        return g.estimator or self.algorithm.estimator


@dataclass
class Program:
    spec: S.SpecFile
    graph: Graph
    algorithms: dict[str, Algorithm]
    train: TrainConfig
    groups: list[ParamGroup] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.spec.path

    def plan(self, algorithm: str | None = None) -> Plan:
        """Applies an algorithm by name (default: the spec's train.algorithm, else bp)."""
        name = algorithm or self.train.algorithm or "bp"
        if name not in self.algorithms:
            raise SpecError([Diagnostic("E207", f"unknown algorithm `{name}`", None,
                                        suggest(name, self.algorithms) or
                                        f"known: {', '.join(sorted(self.algorithms))}")])
        algo = self.algorithms[name]
        g = self.graph.copy()
        d = Diags()
        # Where to point: the spec's `algorithm = ...` when the name comes from it,
        # else the losses (E504, E505) or the network (E506).
        trains = [s for s in self.spec.of(S.Section) if s.kind == "train"]
        chosen = trains[0].get("algorithm") if trains else None
        nets = self.spec.of(S.NetworkDef)
        net_span = nets[0].span if nets else None
        losses = self.spec.of(S.LossDecl)
        if chosen is not None and (algorithm is None or algorithm == self.train.algorithm):
            loss_span = net_span = chosen.span
        else:
            loss_span = losses[0].span if losses else net_span
        _mark_stops(g, algo)
        groups, assignment = _assign_groups(g, self.groups, d)
        if algo.target == "global" and not any(l.final for l in g.losses.values()):
            d.add("E504", f"algorithm `{name}` trains from the final loss, but no loss is on `output`",
                  loss_span, "add `loss final = readout on output`")
        if algo.target == "local" and not any(not l.final for l in g.losses.values()):
            d.add("E505", f"algorithm `{name}` trains from local losses, but the spec has none",
                  loss_span, "add e.g. `loss local = head on blocks`")
        for grp in groups.values():
            est = grp.estimator or algo.estimator
            if est.kind == "forward" and est.perturb == "activity" and _owns_backbone(g, assignment, grp.name):
                if not any(g.node(n).kind == "perturb" for n in g.g):
                    d.add("E506", f"algorithm `{name}` perturbs activities, but the network has "
                          "no `perturb` site", net_span,
                          "add `| perturb |` after each post-linear norm, before the activation")
                    break
        if d:
            raise SpecError(d.items, self.spec.source)
        g.meta["algorithm"] = name
        return Plan(g, algo, groups, assignment, self.train)


def _owns_backbone(g: Graph, assignment: dict, group: str) -> bool:
    return any(gr == group and g.node(n).role == "op" for n, gr in assignment.items())


def _mark_stops(g: Graph, algo: Algorithm) -> None:
    """Stop-gradient edges: the spec's own `stopgrad`, block boundaries when greedy,
    and the readout when the backbone learns from local losses."""
    for u, v in g.g.edges:
        e = g.edge(u, v)
        du, dv = g.node(u), g.node(v)
        if dv.kind == "stopgrad":
            e.stop_gradient, e.why = True, "spec"
        elif algo.greedy and du.role == "op" and dv.role == "op" and du.block and du.block != dv.block:
            e.stop_gradient, e.why = True, "greedy"
        elif algo.greedy and du.role == "op" and dv.role == "op" and du.block and not dv.block:
            e.stop_gradient, e.why = True, "greedy"
    for loss in g.losses.values():
        first = loss.head_nodes[0] if loss.head_nodes else loss.id
        e = g.edge(loss.source, first)
        if loss.final and algo.target == "local" or not loss.final and algo.target == "global":
            e.stop_gradient, e.why = True, "readout"
        else:
            e.stop_gradient, e.why = False, None


def default_groups(g: Graph) -> list[ParamGroup]:
    """Backbone, local heads (exact gradient) and the readout head (lr × 0.1)."""
    groups = [ParamGroup("backbone", ("network",))]
    if any(not l.final for l in g.losses.values()):
        groups.append(ParamGroup("heads", ("heads:local",), estimator=Estimator("backprop")))
    if any(l.final for l in g.losses.values()):
        groups.append(ParamGroup("readout", ("heads:final",), lr_scale=0.1,
                                 estimator=Estimator("backprop")))
    return groups


def _selects(g: Graph, sel: str, nid: str) -> bool | None:
    d = g.node(nid)
    if sel in ("network", "backbone"):
        return d.role == "op"
    if sel == "blocks":
        return d.role == "op" and d.block is not None
    if sel == "heads":
        return d.role == "head"
    if sel == "heads:local":
        return d.role == "head" and not g.losses[d.loss].final
    if sel == "heads:final":
        return d.role == "head" and g.losses[d.loss].final
    if sel.startswith("heads:"):
        return d.role == "head" and g.losses[d.loss].name == sel[6:]
    return d.role == "op" and d.block_def == sel


def _assign_groups(g: Graph, user: list[ParamGroup], d: Diags):
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
    for grp in user:
        for s in grp.select:
            known = s in ("network", "backbone", "blocks", "heads", "heads:local", "heads:final") \
                or s in blocks or s.startswith("heads:") and s[6:] in loss_names
            if not known:
                d.add("E501", f"group `{grp.name}` selects `{s}`, which matches nothing", grp.span,
                      suggest(s, ["blocks", "heads", *blocks, *(f"heads:{l}" for l in loss_names)])
                      or "select blocks, heads, heads(LOSS) or a block name")
        for n in owners:
            if any(_selects(g, s, n) for s in grp.select):
                if n in claimed:
                    d.add("E502", f"parameters of `{n}` are in groups `{claimed[n]}` and "
                          f"`{grp.name}`", grp.span, "each parameter belongs to one group")
                    continue
                claimed[n] = grp.name
                if g.node(n).role == "head" and grp.estimator and grp.estimator.kind != "backprop":
                    d.add("E503", f"group `{grp.name}` gives head parameters a forward-gradient "
                          "estimator", grp.span, "heads learn by their exact local gradient")
        groups[grp.name] = grp
    assignment.update(claimed)
    used = set(assignment.values())
    groups = {k: v for k, v in groups.items() if k in used or k in {u.name for u in user}}
    return groups, assignment


def _program(spec: S.SpecFile) -> Program:
    d = Diags()
    graph = build_and_check(spec, d)
    algos = dict(presets())
    for sec in spec.of(S.Section):
        if sec.kind == "algorithm":
            a = algorithm_from(sec, d, source=spec.path)
            if a is not None:
                algos[a.name] = a
    trains = [s for s in spec.of(S.Section) if s.kind == "train"]
    for extra in trains[1:]:
        d.add("E101", "a spec has one `train` section", extra.span)
    for s in trains:
        if s.name:
            d.add("E002", "`train` takes no name", s.span, "write `train { ... }`")
    train = train_from(trains[0] if trains else None, d)
    if train.algorithm and train.algorithm not in algos:
        sec = trains[0]
        d.add("E207", f"unknown algorithm `{train.algorithm}`", sec.get("algorithm").span,
              suggest(train.algorithm, algos) or f"known: {', '.join(sorted(algos))}")
    groups = [g for g in (group_from(s, d) for s in spec.of(S.Section) if s.kind == "group") if g]
    if not d:
        _assign_groups(graph, groups, d)
    if d:
        raise SpecError(sorted(d.items, key=_pos), spec.source)
    return Program(spec, graph, algos, train, groups)


def _pos(diag: Diagnostic):
    s = diag.span
    return (0, 0) if s is None else (s.line, s.column)


def loads(text: str, path: str = "<spec>") -> Program:
    """Parses and checks spec text."""
    return _program(parse(text, path))


def load(path: str | Path) -> Program:
    """Reads, parses and checks a spec file."""
    return _program(parse_file(path))
