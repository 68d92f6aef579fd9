"""A checked spec, and the plan an algorithm makes of it.

``load(path)`` parses, builds and checks a spec and raises one
:class:`~fgc.errors.SpecError` holding every problem. ``Program.plan(name)``
applies an algorithm: it marks stop-gradient edges, which losses train the
backbone, which perturbation sites are live, and which estimator and learning
rate every parameter group uses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from fgc.front import syntax as S
from fgc.graph.build import Diags, suggest
from fgc.graph import sizes
from fgc.graph.check import build_and_check
from fgc.front.consts import constants, resolve_section
from fgc.front.config import (Algorithm, Estimator, ParamGroup, TrainConfig, algorithm_from,
                        group_from, presets)
from fgc.front.train_section import train_from
from fgc.errors import Diagnostic, SpecError, plural
from fgc.graph.ir import Graph
from fgc.plan.credit import RULES as CREDIT_RULES, CreditMap, credit_map
from fgc.plan.groups import assign_groups
from fgc.plan.feedback import DFA, FeedbackNeed, feedback_needs, segment
from fgc.plan.pieces import Piece, plan_pieces
from fgc.graph.ops import OPS
from fgc.front.parse import parse, parse_file


@dataclass(frozen=True)
class Plan:
    """A graph with an algorithm applied, ready to lower."""

    graph: Graph
    algorithm: Algorithm
    groups: dict[str, ParamGroup]  # group name -> group
    assignment: dict[str, str]  # node id -> group name (nodes with parameters)
    train: TrainConfig
    credit: dict[str, CreditMap] = field(default_factory=dict)  # credit rule -> map
    warnings: tuple[Diagnostic, ...] = ()  # W601-W603: what plans but cannot work as written
    feedback: tuple[FeedbackNeed, ...] = ()  # fixed random matrices to lower (fgc.plan.feedback)
    units: dict = field(default_factory=dict)  # project estimator -> its units (plan.guesses)
    # The parts a step may run one after another (fgc.plan.pieces); () from code that
    # builds a Plan by hand means one piece, the whole program.
    pieces: tuple[Piece, ...] = ()

    def credit_map(self, rule: str = "exact") -> CreditMap:
        """The planned credit map under ``rule`` (:data:`fgc.plan.credit.RULES`)."""
        if rule not in self.credit:
            raise KeyError(f"no credit map for rule `{rule}` (planned: {', '.join(self.credit)})")
        return self.credit[rule]

    def estimator_of(self, group: str) -> Estimator:
        """The group's own estimator; else backprop for a group of head parameters only
        (heads always learn by their exact gradient); else the algorithm's."""
        g = self.groups[group]
        if g.estimator is not None:
            return g.estimator
        if _heads_only(self.graph, self.assignment, group):
            return Estimator("backprop")
        return self.algorithm.estimator


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
        groups, assignment = assign_groups(g, self.groups, d)
        if algo.target == "global" and not any(l.final for l in g.losses.values()):
            d.add("E504", f"algorithm `{name}` trains from the final loss, but no loss is on `output`",
                  loss_span, "add `loss final = readout on output`")
        if algo.target == "local" and not any(not l.final or l.also_local for l in g.losses.values()):
            d.add("E505", f"algorithm `{name}` trains from local losses, but the spec has none",
                  loss_span, "add e.g. `loss local = head on blocks`")
        activity = [grp.name for grp in groups.values()
                    if _is_activity(grp.estimator or algo.estimator)
                    and _owns_backbone(g, assignment, grp.name)]
        if activity and not any(g.node(n).kind == "perturb" for n in g.g):
            d.add("E506", f"algorithm `{name}` perturbs activities, but the network has "
                  "no `perturb` site", net_span,
                  "add `| perturb |` after each post-linear norm, before the activation")
        elif activity:
            # the estimator that needs the noise is the group's own, or else the algorithm's
            whose = {gr: f"group `{gr}`" if groups[gr].estimator is not None else f"`{name}`"
                     for gr in activity}
            _check_site_coverage(g, {n: whose[gr] for n, gr in assignment.items()
                                     if gr in activity and g.node(n).role == "op"}, d)
        _check_direct_feedback(g, algo, groups, assignment, loss_span, d)
        units = _projection_units(g, algo, groups, assignment, d, loss_span, name)
        if not d:
            sizes.check(g, self.train.batch_size, d, tangents=sizes.max_tangents(
                Plan(g, algo, groups, assignment, self.train)), why=f" under `{name}`")
        if d:
            raise SpecError(sorted(d.items, key=_pos), self.spec.source)
        g.meta["algorithm"] = name
        plan = Plan(g, algo, groups, assignment, self.train,
                    {rule: credit_map(g, rule) for rule in CREDIT_RULES}, units=units,
                    pieces=plan_pieces(g, algo))
        plan = replace(plan, feedback=feedback_needs(
            g, {n: plan.estimator_of(gr) for n, gr in assignment.items()}))
        return replace(plan, warnings=tuple(plan_warnings(plan, name, net_span, self.groups)))


def learns(plan: Plan, nid: str) -> bool:
    """Whether a parameter node's update can be non-zero under the plan: its output
    reaches a loss (exact and weight rules), or, under activity perturbation, one of
    the sites whose estimate it learns from reaches a loss."""
    d = plan.graph.node(nid)
    if d.role == "head":
        return True
    est = plan.estimator_of(plan.assignment[nid])
    if est.kind == "project":
        return any(nid in u.params for u in plan.units.get(est, ()))
    cmap = plan.credit_map(est.credit if est.kind == "forward" else "exact")
    if est.kind == "forward" and est.perturb == "activity":
        return any(cmap.sites[s] for s, owners in cmap.owners.items() if nid in owners)
    return bool(cmap.weights.get(nid))


def plan_warnings(plan: Plan, name: str, net_span, user_groups) -> list[Diagnostic]:
    """W601 dead sites, W602 parameters that can never change, W603 ignored settings."""
    g, out = plan.graph, []
    activity = any(plan.estimator_of(gr).perturb == "activity"
                   for gr in set(plan.assignment.values()))
    if activity:
        for site in plan.credit_map().dead_sites:
            out.append(Diagnostic(
                "W601", f"perturbation site `{site}` reaches no loss under `{name}` (its path "
                "is cut), so its noise is wasted and the layers before it do not learn from it",
                g.node(site).span, "move the site before the stop-gradient, or attach a loss "
                "after it; `fgc check --credit` shows every site's credit", "warning"))
    frozen: dict[str, list[str]] = {}
    for n, gr in plan.assignment.items():
        if not learns(plan, n):
            frozen.setdefault(gr, []).append(n)
    for gr, nodes in frozen.items():
        total = sum(1 for v in plan.assignment.values() if v == gr)
        span = plan.groups[gr].span or g.node(nodes[0]).span or net_span
        out.append(Diagnostic(
            "W602", f"{plural(len(nodes), 'parameter node')} of group `{gr}` "
            f"({'all' if len(nodes) == total else f'of {total}'}) can never change under "
            f"`{name}`: no loss reaches {'it' if len(nodes) == 1 else 'them'} "
            f"(`{nodes[0]}`{', ...' if len(nodes) > 1 else ''})", span,
            "a greedy algorithm with a global target trains only the last block: use a local "
            "target" if plan.algorithm.greedy and plan.algorithm.target == "global" else
            "a `stopgrad` or a readout edge cuts them off every loss: move it, or add a local loss",
            "warning"))
    algo_est = plan.algorithm.estimator
    if algo_est.kind == "forward" and not any(
            plan.groups[gr].estimator is None and plan.graph.node(n).role == "op"
            for n, gr in plan.assignment.items()):
        out.append(Diagnostic(
            "W603", f"the estimator of `{name}` is ignored: every backbone group sets its own",
            net_span, "drop the group estimators, or pick an algorithm with that estimator",
            "warning"))
    for grp in user_groups:
        if grp.weight_decay and not any(
                "weight" in g.node(n).params for n, gr in plan.assignment.items() if gr == grp.name):
            out.append(Diagnostic(
                "W603", f"group `{grp.name}` sets weight_decay, but it has no weights "
                "(decay applies to weights only, not to biases or norm parameters)", grp.span,
                "drop the setting", "warning"))
    return out


def _check_direct_feedback(g: Graph, algo: Algorithm, groups: dict, assignment: dict, span,
                           d: Diags) -> None:
    """E509: direct feedback alignment sends the *final* loss's output error to every layer,
    so it cannot serve an algorithm whose backbone learns from local losses."""
    users = sorted(gr for gr, grp in groups.items()
                   if (grp.estimator or algo.estimator).kind == DFA
                   and _owns_backbone(g, assignment, gr))
    for gr in users:
        members = [n for n, a in assignment.items() if a == gr and g.node(n).role == "op"]
        covered = {m for n in members if OPS[g.node(n).kind].role == "linear"
                   for m in segment(g, n)}
        other = [n for n in members if n not in covered]
        if other:
            d.add("E510", f"group `{gr}` uses direct_feedback_alignment, which updates weight "
                  f"layers (and the norms between them and their output points) from the "
                  f"output error, but `{other[0]}` ({g.node(other[0]).kind}) has parameters "
                  "outside every layer's segment", groups[gr].span or span,
                  "make the norm `affine = false`, move it after a weight layer, or use "
                  "feedback_alignment, whose backward trains every norm parameter")
    if users and algo.target == "local":
        whose = f"group `{users[0]}`" if groups[users[0]].estimator is not None \
            else f"`{algo.name}`"
        d.add("E509", f"{whose} uses direct_feedback_alignment, which sends the final loss's "
              f"output error to every layer, but `{algo.name}` trains the backbone from local "
              "losses (target = local)", span,
              "use target = global with direct_feedback_alignment, or feedback_alignment for "
              "local losses (l-fa, lg-fa)")


def _projection_units(g: Graph, algo: Algorithm, groups: dict, assignment: dict, d: Diags,
                      span, name: str) -> dict:
    """Each project(...) estimator's units (:func:`fgc.plan.guesses.plan_units`)."""
    from fgc.plan.guesses import plan_units
    by_est: dict[Estimator, set[str]] = {}
    for n, gr in assignment.items():
        est = groups[gr].estimator or algo.estimator
        if g.node(n).role == "op" and est.kind == "project":
            by_est.setdefault(est, set()).add(n)
    return {est: plan_units(g, est, nodes, d, span, name) for est, nodes in by_est.items()}


def _owns_backbone(g: Graph, assignment: dict, group: str) -> bool:
    return any(gr == group and g.node(n).role == "op" for n, gr in assignment.items())


def _heads_only(g: Graph, assignment: dict, group: str) -> bool:
    roles = {g.node(n).role for n, gr in assignment.items() if gr == group}
    return roles == {"head"}


def _is_activity(est: Estimator) -> bool:
    return est.kind == "forward" and est.perturb == "activity"


def _unperturbed_reach(g: Graph, nid: str) -> str | None:
    """What ``nid``'s output reaches before any `perturb` site, following only edges
    that carry gradients (and tangents): the nearest loss, or for a layer with weights
    the nearest next layer with weights; None if every such path passes a site."""
    linear = OPS[g.node(nid).kind].role == "linear"
    seen, todo = {nid}, deque([nid])
    while todo:
        u = todo.popleft()
        for v in g.g.successors(u):
            if v in seen or g.edge(u, v).stop_gradient:
                continue
            seen.add(v)
            d = g.node(v)
            if d.kind == "perturb":
                continue
            if d.role == "loss" or linear and d.role == "op" and OPS[d.kind].role == "linear":
                return v
            todo.append(v)
    return None


def _check_site_coverage(g: Graph, nodes: dict[str, str], d: Diags) -> None:
    """E507: activity noise enters only at `perturb` sites, and a layer's gradient is
    estimated from the site right after it. A path from a layer to a loss that passes
    no site contributes nothing (the estimate is missing or biased); a layer whose
    output reaches the next layer with weights first has no site of its own."""
    by_span: dict = {}  # the ops of one block definition share a span: one report each
    order = {n: i for i, n in enumerate(g.topo())}
    for n in sorted(nodes, key=order.__getitem__):
        if not g.node(n).params:
            continue
        hit = _unperturbed_reach(g, n)
        if hit is not None:
            by_span.setdefault(g.node(n).span, []).append((n, hit))
    for span, hits in by_span.items():
        n, hit = hits[0]
        if g.node(hit).role == "loss":
            info = g.losses[hit]
            what = f"loss `{info.name}` on `{hit.split('@', 1)[1]}`"
        else:
            what = f"the next layer `{hit}`"
        more = ""
        if len(hits) > 1:
            more = (f" (and {plural(len(hits) - 1, 'more instance')} of block "
                    f"`{g.node(n).block_def}`)")
        d.add("E507", f"`{n}`{more} reaches {what} before any `perturb` site, so {nodes[n]} "
              "has no activity noise of its own to estimate its gradient from", span,
              "add `| perturb |` after the layer's norm, before its activation")


def _check_views(graph: Graph, train: TrainConfig, sec, d: Diags) -> None:
    """E408: a loss that compares two views of each example needs ``views = 2``."""
    from fgc.graph.loss_kinds import view_losses
    needs = view_losses(graph)
    if needs and train.views != 2:
        loss = needs[0]
        at = sec.get("views") if sec is not None and sec.get("views") is not None else None
        d.add("E408", f"loss `{loss.name}` is `{loss.kind}`: it compares two views of each "
              f"example, but the train section makes {train.views}",
              at.span if at is not None else loss.span,
              "add `views = 2` and an augmentation, e.g. `augment = byol(min_area = 0.5)`, "
              "to the train section")
    if needs and train.batch_size < 2:
        at = sec.get("batch_size") if sec is not None else None
        d.add("E408", f"loss `{needs[0].name}` is `{needs[0].kind}`: with batch_size "
              f"{train.batch_size} it compares the two views of one example with no other "
              "example to tell them from, so it is constant and trains nothing",
              at.span if at is not None else needs[0].span, "set batch_size to 2 or more")


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
    project = algo.estimator.kind == "project"  # its rule cuts what it needs (plan.guesses)
    for loss in g.losses.values():
        first = loss.head_nodes[0] if loss.head_nodes else loss.id
        e = g.edge(loss.source, first)
        if not project and (loss.final and algo.target == "local" and not loss.also_local
                            or not loss.final and algo.target == "global"):
            e.stop_gradient, e.why = True, "readout"
        elif g.node(first).kind != "stopgrad":  # a head's own leading `stopgrad` stays
            e.stop_gradient, e.why = False, None


def _program(spec: S.SpecFile) -> Program:
    d = Diags()
    graph = build_and_check(spec, d)
    env = constants(spec)
    spec = replace(spec, items=tuple(resolve_section(it, env, d) if isinstance(it, S.Section)
                                     else it for it in spec.items))
    algos = dict(presets())
    seen: dict[tuple[str, str], S.Section] = {}  # (kind, name) -> the section that counts
    for sec in spec.of(S.Section):
        if sec.kind not in ("algorithm", "group") or not sec.name:
            continue
        if sec.kind == "algorithm" and sec.name in presets():
            d.add("E111", f"`{sec.name}` is a built-in algorithm and cannot be redefined",
                  sec.span, f"choose another name, e.g. `my-{sec.name}`")
        elif (sec.kind, sec.name) in seen:
            d.add("E101", f"{sec.kind} `{sec.name}` is defined twice", sec.span,
                  f"first defined at {seen[sec.kind, sec.name].span}")
        else:
            seen[sec.kind, sec.name] = sec
    for sec in spec.of(S.Section):
        if sec.kind == "algorithm":
            a = algorithm_from(sec, d, source=spec.path)
            if a is not None and seen.get(("algorithm", a.name)) is sec:
                algos[a.name] = a
    trains = [s for s in spec.of(S.Section) if s.kind == "train"]
    for extra in trains[1:]:
        d.add("E101", "a spec has one `train` section", extra.span)
    for s in trains:
        if s.name:
            d.add("E002", "`train` takes no name", s.span, "write `train { ... }`")
    train = train_from(trains[0] if trains else None, d)
    _check_views(graph, train, trains[0] if trains else None, d)
    if not d:  # sizes from a graph whose shapes are all known
        sizes.check(graph, train.batch_size, d)
    broken = {s.name for s in spec.of(S.Section) if s.kind == "algorithm"}
    if train.algorithm and train.algorithm not in algos and train.algorithm not in broken:
        sec = trains[0]
        d.add("E207", f"unknown algorithm `{train.algorithm}`", sec.get("algorithm").span,
              suggest(train.algorithm, algos) or f"known: {', '.join(sorted(algos))}")
    groups = []
    for sec in spec.of(S.Section):
        if sec.kind == "group":
            grp = group_from(sec, d)  # a duplicate's own mistakes are reported too
            if grp is not None and seen.get(("group", grp.name)) is sec:
                groups.append(grp)
    if not d:
        assign_groups(graph, groups, d)
    if d:
        raise SpecError(sorted(d.items, key=_pos), spec.source)
    return Program(spec, graph, algos, train, groups)


def _pos(diag: Diagnostic):
    s = diag.span
    return (0, 0) if s is None else (s.line, s.column)


def from_syntax(spec: S.SpecFile) -> Program:
    """Builds and checks a parsed (possibly edited, e.g. by ``--set``) spec."""
    return _program(spec)


def loads(text: str, path: str = "<spec>") -> Program:
    """Parses and checks spec text."""
    return _program(parse(text, path))


def load(path: str | Path) -> Program:
    """Reads, parses and checks a spec file."""
    return _program(parse_file(path))
