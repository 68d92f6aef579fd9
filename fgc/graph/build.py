"""Elaboration: a syntax tree becomes a graph IR.

Constants are evaluated (:mod:`fgc.graph.values`), blocks are instantiated (``mixer(C, G) * 3`` gives
``mixer.1``..``mixer.3``), pipes are expanded into op nodes and losses get their
head ops (:mod:`fgc.graph.losses`). Every problem is recorded as a diagnostic and elaboration carries on,
so that the user sees all of them at once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import networkx as nx

from fgc.front import syntax as S
from fgc.errors import Diagnostic, Span
from fgc.graph.ir import EdgeData, Graph, NodeData
from fgc.graph.ops import OPS, REQUIRED
from fgc.graph.losses import LossElaboration
from fgc.graph.values import ValueElaboration

RESERVED_VALUES = ("in", "output", "blocks")
MAX_INT = 10 ** 100  # larger results of arithmetic are typos (and unprintable past 4300 digits)
MAX_REPEAT = 1000  # `block * N` instantiates N blocks; more is a typo, not a network


class Diags:
    """Collects diagnostics; never raises."""

    def __init__(self):
        self.items: list[Diagnostic] = []

    def add(self, code: str, message: str, span: Span | None, hint: str | None = None,
            severity: str = "error") -> None:
        self.items.append(Diagnostic(code, message, span, hint, severity))

    def __bool__(self) -> bool:
        return any(d.severity == "error" for d in self.items)


def suggest(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, [c for c in candidates if c != name], n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


class _Skip(Exception):
    """An expression could not be evaluated; a diagnostic was already recorded."""


@dataclass
class _Scope:
    """Names visible while elaborating one block instance or the network."""

    consts: dict  # name -> number or other evaluated value
    values: dict  # name -> node id
    prefix: str
    block: str | None = None
    block_def: str | None = None
    counter: int = 0


@dataclass
class Builder(ValueElaboration, LossElaboration):
    spec: S.SpecFile
    diags: Diags = field(default_factory=Diags)

    def __post_init__(self):
        self.graph = Graph(meta={"title": None, "blocks": [], "output": None, "path": self.spec.path})
        self.consts: dict = {}
        self.blocks: dict[str, S.BlockDef] = {}
        self.heads: dict[str, S.HeadDef] = {}
        self.used_defs: set[str] = set()
        self.instances: dict[str, int] = {}
        self.net_values: dict[str, str] = {}

    # --- entry ---------------------------------------------------------------------
    def build(self) -> Graph:
        sp = self.spec
        for d in sp.of(S.SpecDecl)[1:]:
            self.diags.add("E101", "`spec` is given twice", d.span, "keep one title")
        if sp.of(S.SpecDecl):
            self.graph.meta["title"] = sp.of(S.SpecDecl)[0].title
        self._collect_defs()
        self._consts()
        inputs = sp.of(S.InputDecl)
        top = sp.items[0].span if sp.items else None  # where a missing item is reported
        if not inputs:
            self.diags.add("E102", "the spec has no `input`", top,
                           "add e.g. `input x = image(28, 28, 1), classes = 10`")
        for extra in inputs[1:]:
            self.diags.add("E101", "a spec has one `input`", extra.span)
        nets = sp.of(S.NetworkDef)
        if not nets:
            self.diags.add("E103", "the spec has no `network { ... }`", top,
                           "add `network { out x | ... }`")
        for extra in nets[1:]:
            self.diags.add("E101", "a spec has one `network`", extra.span)
        if inputs:
            self._input(inputs[0])
        if inputs and nets:
            self._network(nets[0])
            for loss in sp.of(S.LossDecl):
                self._loss(loss)
            if not sp.of(S.LossDecl):
                self.diags.add("E110", "the spec declares no `loss`", nets[0].span,
                               "add e.g. `loss final = readout on output`")
        self.used_defs |= _mentioned(sp)
        # A loss that picks its head through a constant (`loss local = AUX on ...` with
        # `const AUX = cnn_aux`, changed by `--set const.AUX=mlp_aux`) makes every head an
        # alternative to pick: the ones not picked are not forgotten, so no E106 for them.
        if any(_head_alias(l, self.consts) for l in sp.of(S.LossDecl)):
            self.used_defs |= set(self.heads)
        for name, d in {**self.blocks, **self.heads}.items():
            if name not in self.used_defs:
                what = "block" if name in self.blocks else "head"
                self.diags.add("E106", f"{what} `{name}` is defined but never used", d.span,
                               "use it or remove it")
        return self.graph

    def _collect_defs(self):
        seen: dict[str, Span | None] = {}
        for d in self.spec.of(S.BlockDef) + self.spec.of(S.HeadDef):
            if d.name in seen:
                self.diags.add("E101", f"`{d.name}` is defined twice", d.span,
                               f"first defined at {seen[d.name]}")
                continue
            seen[d.name] = d.span
            if d.name in OPS:
                self.diags.add("E111", f"`{d.name}` is a built-in op and cannot be redefined",
                               d.span, "choose another name")
                continue
            (self.blocks if isinstance(d, S.BlockDef) else self.heads)[d.name] = d
            if len(set(d.params)) != len(d.params):
                dup = next(p for i, p in enumerate(d.params) if p in d.params[:i])
                self.diags.add("E101", f"`{d.name}` has the parameter `{dup}` twice", d.span)

    def _consts(self):
        for c in self.spec.of(S.ConstDecl):
            if c.name in self.consts:
                self.diags.add("E101", f"constant `{c.name}` is defined twice", c.span)
                continue
            try:
                self.consts[c.name] = self.eval(c.value, self.consts)
            except _Skip:
                self.consts[c.name] = None

    # --- values ---------------------------------------------------------------------
    def _input(self, d: S.InputDecl):
        kind = d.kind
        dims = []
        try:
            dims = [self.eval(a, self.consts) for a in kind.args]
        except _Skip:
            dims = None
        shapes = {"image": 3, "vector": 1}
        if kind.func not in shapes:
            self.diags.add("E201", f"unknown input kind `{kind.func}`", kind.span,
                           suggest(kind.func, shapes) or "use image(H, W, C) or vector(D)")
            dims = None
        elif kind.kwargs:
            self.diags.add("E203", f"{kind.func}(...) has no argument `{kind.kwargs[0].name}`",
                           kind.kwargs[0].span, "give the sizes by position, e.g. image(28, 28, 1)")
            dims = None
        elif dims is not None and (len(dims) != shapes[kind.func]
                                   or not all(isinstance(x, int) and x > 0 for x in dims)):
            n = shapes[kind.func]
            self.diags.add("E206", f"{kind.func}(...) takes {n} positive "
                           f"{'integer' if n == 1 else 'integers'}",
                           kind.span, "e.g. image(28, 28, 1) or vector(784)")
            dims = None
        opts = {}
        for o in d.options:
            if o.name not in ("classes", "normalize"):
                self.diags.add("E203", f"unknown input option `{o.name}`", o.span,
                               suggest(o.name, ("classes", "normalize")) or "options: classes, normalize")
                continue
            if o.name in opts:
                self.diags.add("E101", f"`{o.name}` is given twice", o.span, "give it once")
                continue
            try:
                opts[o.name] = self.eval(o.value, self.consts)
            except _Skip:
                pass
        classes = opts.get("classes")
        if not isinstance(classes, int) or classes < 2:
            self.diags.add("E206", "the input needs `classes = N` with N ≥ 2", d.span,
                           "e.g. `input x = image(28, 28, 1), classes = 10`")
            classes = 2
        norm = self._normalize(opts["normalize"], d) if "normalize" in opts else None
        self.consts.setdefault("classes", classes)
        self.graph.meta["classes"] = classes
        self.graph.meta["input_shape"] = list(dims) if dims is not None else None
        self.graph.meta["normalize"] = norm
        self.graph.add_node("input", NodeData("input", "input", {"name": d.name},
                                              shape=tuple(dims) if dims is not None else None,
                                              span=d.span))
        self.net_values[d.name] = "input"

    def _normalize(self, norm, d: S.InputDecl) -> str | None:
        """The statistics name of ``normalize = NAME``, checked against fgc.training.data."""
        from fgc.training.data import DATASET_STATS  # numpy and PIL: only when a spec names statistics
        known = (*DATASET_STATS, "none")
        span = next(o.value.span for o in d.options if o.name == "normalize")
        name = norm.name if isinstance(norm, _Symbol) and not norm.args and not norm.kwargs \
            else norm if isinstance(norm, str) else None
        if name is None:
            self.diags.add("E206", "normalize must be the name of dataset statistics", span,
                           f"one of {', '.join(known)}")
            return None
        if name not in known:
            self.diags.add("E207", f"unknown normalization statistics `{name}`", span,
                           suggest(name, known) or f"use one of {', '.join(known)}")
            return None
        return name

    # --- network and blocks -----------------------------------------------------------
    def _network(self, net: S.NetworkDef):
        scope = _Scope(dict(self.consts), dict(self.net_values), "net")
        targets = set()  # a value a loss attaches to is used, even if no pipe reads it
        for loss in self.spec.of(S.LossDecl):
            items = loss.target.items if isinstance(loss.target, S.List) else (loss.target,)
            targets |= {t.id for t in items if isinstance(t, S.Name)}
        out = self._body(net.body, scope, net.span, "network", targets)
        self.net_values = scope.values
        if out is not None:
            self.graph.meta["output"] = out

    def _body(self, body, scope: _Scope, span, where: str, loss_targets=frozenset()) -> str | None:
        """Elaborates statements in dependency order; returns the `out` node id.

        ``loss_targets``: names losses attach to (network only); they count as used."""
        assigns: dict[str, S.Assign] = {}
        outs = [s for s in body if isinstance(s, S.Out)]
        for s in body:
            if isinstance(s, S.Assign):
                if s.name in assigns or s.name in scope.values:
                    self.diags.add("E109", f"`{s.name}` is assigned twice", s.span,
                                   "each name is assigned once; pick a new name")
                    continue
                if s.name in RESERVED_VALUES or s.name in scope.consts:
                    what = "a reserved name" if s.name in RESERVED_VALUES else "a constant"
                    self.diags.add("E109", f"`{s.name}` is {what}, not a new value", s.span,
                                   "pick another name")
                    continue
                assigns[s.name] = s
        deps = nx.DiGraph()
        for name, s in assigns.items():
            deps.add_node(name)
            for ref in _refs(s.pipe):
                if ref in assigns:
                    deps.add_edge(ref, name)
        try:
            cyc = nx.find_cycle(deps)
            names = [u for u, _ in cyc]
            first = assigns[names[0]]
            self.diags.add("E108", "cycle: " + " → ".join(f"`{n}`" for n in names + [names[0]]),
                           first.span, "a value cannot depend on itself; break the loop")
            return None
        except nx.NetworkXNoCycle:
            pass
        for name in nx.lexicographical_topological_sort(deps, key=lambda n: list(assigns).index(n)):
            scope.values[name] = self._pipe(assigns[name].pipe, scope)  # None: failed
        if len(outs) != 1:
            self.diags.add("E104", f"{where} needs exactly one `out` statement, found {len(outs)}",
                           span if not outs else outs[1].span, "end it with `out <pipe>`")
            return None
        out = self._pipe(outs[0].pipe, scope)
        used = set(loss_targets)
        for s in body:
            used |= set(_refs(s.pipe))
        for name, s in assigns.items():
            if name not in used:
                self.diags.add("E112", f"`{name}` is computed but never used", s.span,
                               "use it in a later pipe, attach a loss to it, or remove it")
        return out

    def _pipe(self, pipe: S.Pipe, scope: _Scope) -> str | None:
        first, *rest = pipe.stages
        if not (isinstance(first, S.Name) and first.id in scope.values):
            if isinstance(first, S.Name) and first.id not in OPS and first.id not in self.blocks:
                known = list(scope.values)
                self.diags.add("E201", f"unknown value `{first.id}`", first.span,
                               suggest(first.id, known) or f"known values: {', '.join(known) or 'none'}")
            else:
                self.diags.add("E113", "a pipe must start from a value", first.span,
                               "write `name = x | ...` where x is the input, `in` or an earlier value")
            return None
        cur = scope.values[first.id]
        if cur is None:  # the value failed; its error is reported already
            for later in rest:
                self._lint(later, scope.consts, scope.values)
            return None
        for i, st in enumerate(rest):
            prev, cur = cur, self._stage(st, cur, scope)
            if cur is None:
                self.graph.cut.add(prev)
                for later in rest[i + 1:]:
                    self._lint(later, scope.consts, scope.values)
                return None
        return cur

    def _stage(self, st, cur: str, scope: _Scope) -> str | None:
        count = 1
        if isinstance(st, S.Repeat):
            count, st = st.count, st.stage
            if st_name(st) in OPS:
                self.diags.add("E114", f"only blocks can be repeated, `{st_name(st)}` is an op",
                               st.span, "define a block and repeat that")
                return None
            if count < 1:
                self.diags.add("E114", "repeat count must be at least 1", st.span)
                return None
            if count > MAX_REPEAT:
                self.diags.add("E114", f"repeat count {count} is over the limit of {MAX_REPEAT}",
                               st.span)
                return None
        name = st_name(st)
        if isinstance(st, S.Name) and name in scope.values:
            self.diags.add("E113", f"`{name}` is a value, not an op", st.span,
                           f"to combine values use an op such as add({name})")
            return None
        if name in self.blocks:
            if scope.block is not None:
                self.diags.add("E115", f"block `{name}` used inside block `{scope.block_def}`",
                               st.span, "blocks are instantiated in `network`; inline the ops")
                return None
            self.used_defs.add(name)
            for _ in range(count):
                cur = self._block(self.blocks[name], st, cur, scope)
                if cur is None:
                    return None
            return cur
        if name in self.heads:
            self.diags.add("E116", f"head `{name}` used in a pipe", st.span,
                           "heads are attached with `loss NAME = head on TARGET`")
            return None
        return self._op(st, cur, scope)

    def _op(self, st, cur: str, scope: _Scope, role: str = "op", loss: str | None = None):
        name = st_name(st)
        if name not in OPS:
            self.diags.add("E201", f"unknown op or block `{name}`", st.span,
                           suggest(name, list(OPS) + list(self.blocks)))
            return None
        d = OPS[name]
        args = st.args if isinstance(st, S.Call) else ()
        kwargs = st.kwargs if isinstance(st, S.Call) else ()
        operands = [cur]
        if d.arity == 2:
            if not args or not isinstance(args[0], S.Name):
                self.diags.add("E204", f"`{name}` needs a value to combine with", st.span,
                               f"e.g. {name}(in)")
                return None
            ref = args[0]
            if ref.id not in scope.values:
                self.diags.add("E201", f"unknown value `{ref.id}`", ref.span,
                               suggest(ref.id, scope.values))
                return None
            if scope.values[ref.id] is None:  # failed earlier, already reported
                return None
            operands.append(scope.values[ref.id])
            args = args[1:]
        attrs = self._bind(name, d.args, args, kwargs, scope.consts, st.span)
        if attrs is None:
            return None
        nid = f"{scope.prefix}/{name}.{scope.counter}"
        scope.counter += 1
        self.graph.add_node(nid, NodeData(name, role, attrs, scope.block, scope.block_def, loss,
                                          span=st.span))
        for port, src in enumerate(operands):
            self.graph.add_edge(src, nid, EdgeData(port))
        return nid

    def _block(self, bd: S.BlockDef, call, cur: str, outer: _Scope) -> str | None:
        args = call.args if isinstance(call, S.Call) else ()
        kwargs = call.kwargs if isinstance(call, S.Call) else ()
        sig = tuple(_block_arg(p) for p in bd.params)
        bound = self._bind(bd.name, sig, args, kwargs, outer.consts, call.span)
        if bound is None:
            return None
        k = self.instances.get(bd.name, 0) + 1
        self.instances[bd.name] = k
        inst = f"{bd.name}.{k}"
        self.graph.meta["blocks"].append(inst)
        scope = _Scope({**self.consts, **bound}, {"in": cur}, inst, inst, bd.name)
        out = self._body(bd.body, scope, bd.span, f"block `{bd.name}`")
        self.graph.meta.setdefault("block_outputs", {})[inst] = out
        return out

    # --- losses -------------------------------------------------------------------
@dataclass(frozen=True)
class _Symbol:
    """A name or call that is not a number: an enum-like word (`patches`, `zeros`)."""

    name: str
    span: Span | None = None
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)


def _block_arg(p: str):
    from fgc.graph.ops import Arg
    return Arg(p, REQUIRED, (int, float, bool, str))


def _sig_hint(fname, sig) -> str:
    parts = [a.name if a.default is REQUIRED else f"{a.name}={a.default!r}" for a in sig]
    return f"{fname}({', '.join(parts)})"


def st_name(st) -> str:
    return st.id if isinstance(st, S.Name) else st.func if isinstance(st, S.Call) else st_name(st.stage)


def _refs(pipe: S.Pipe):
    """Names a pipe reads: its first stage and value arguments (add(x))."""
    first = pipe.stages[0]
    if isinstance(first, S.Name):
        yield first.id
    for st in pipe.stages[1:]:
        if isinstance(st, S.Call) and st.func in OPS and OPS[st.func].arity == 2:
            if st.args and isinstance(st.args[0], S.Name):
                yield st.args[0].id


def _head_alias(loss: S.LossDecl, consts: dict) -> bool:
    """Whether the loss names its head through a constant holding a word."""
    v = consts.get(st_name(loss.head))
    return isinstance(v, _Symbol) and not v.args and not v.kwargs


def _mentioned(spec: S.SpecFile) -> set[str]:
    """Names used as pipe stages or loss heads anywhere in the spec."""
    out = {st_name(l.head) for l in spec.of(S.LossDecl)}
    pipes = [h.pipe for h in spec.of(S.HeadDef)]
    for d in spec.of(S.BlockDef) + spec.of(S.NetworkDef):
        pipes += [s.pipe for s in d.body]
    for p in pipes:
        out |= {st_name(st) for st in p.stages}
    return out
