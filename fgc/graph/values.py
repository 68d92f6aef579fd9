"""Evaluating values inside a spec: constant expressions, op and block arguments bound
to their signatures, and the lint of names a statement uses.

Part of :class:`fgc.graph.build.Builder` (a mixin over the builder's diagnostics)."""

from __future__ import annotations

from fgc.front import syntax as S
from fgc.errors import plural
from fgc.graph import build as _b  # shared helpers; used only at call time (no cycle at import)
from fgc.graph.ops import OPS, REQUIRED


class ValueElaboration:
    """Constant expressions, argument binding and name lints."""

    def eval(self, v: S.Value, env: dict, what: str = "value"):
        """Evaluates a constant expression: numbers, names, lists, calls (kept symbolic)."""
        if isinstance(v, (S.Number, S.String, S.Bool)):
            return v.value
        if isinstance(v, S.Name):
            if v.id in env:
                if env[v.id] is None:
                    raise _b._Skip
                return env[v.id]
            return _b._Symbol(v.id, v.span)
        if isinstance(v, S.List):
            return [self.eval(x, env) for x in v.items]
        if isinstance(v, S.Call):
            return _b._Symbol(v.func, v.span, [self.eval(a, env) for a in v.args],
                           {k.name: self.eval(k.value, env) for k in v.kwargs})
        if isinstance(v, S.BinOp):
            a, b = self.eval(v.left, env), self.eval(v.right, env)
            for side, x in ((v.left, a), (v.right, b)):
                if not isinstance(x, (int, float)) or isinstance(x, bool):
                    self._unknown_or_type(side, x, env, "arithmetic needs numbers")
                    raise _b._Skip
            if v.op in "+*":
                r = a + b if v.op == "+" else a * b
                if isinstance(r, int) and abs(r) > _b.MAX_INT:
                    self.diags.add("E202", f"the result has {len(str(abs(r)))} digits, too many",
                                   v.span, "is an operand a typo?")
                    raise _b._Skip
                return r
            if b == 0:
                self.diags.add("E202", "division by zero", v.span)
                raise _b._Skip
            if isinstance(a, int) and isinstance(b, int):
                if a % b:
                    self.diags.add("E202", f"{a} / {b} is not a whole number", v.span,
                                   "widths and counts must divide exactly")
                    raise _b._Skip
                return a // b
            return a / b
        if isinstance(v, S.Index):
            self.diags.add("E206", f"`{v.base}[...]` selects block instances, which only a loss "
                           "target or a group's `params` can use", v.span)
            raise _b._Skip
        raise _b._Skip  # pragma: no cover

    def _unknown_or_type(self, node, val, env, msg):
        if isinstance(val, _b._Symbol) and not val.args and not val.kwargs:
            self.diags.add("E201", f"unknown name `{val.name}`", node.span, _b.suggest(val.name, env))
        else:
            self.diags.add("E206", msg, node.span)

    # --- input ------------------------------------------------------------------------
    def _lint(self, st, env: dict, values=()) -> None:
        """Checks names and arguments of a stage that cannot be elaborated (its input
        failed), so that its own mistakes are reported in the same run."""
        if isinstance(st, S.Repeat):
            st = st.stage
        name = _b.st_name(st)
        args = st.args if isinstance(st, S.Call) else ()
        kwargs = st.kwargs if isinstance(st, S.Call) else ()
        if name in self.heads or name in values:
            return  # misuse, but only reported on elaborated pipes (E113, E116)
        if name in self.blocks:
            self.used_defs.add(name)
            sig = tuple(_b._block_arg(p) for p in self.blocks[name].params)
        elif name in OPS:
            sig = OPS[name].args
            if OPS[name].arity == 2:
                args = args[1:]
        else:
            self.diags.add("E201", f"unknown op or block `{name}`", st.span,
                           _b.suggest(name, list(OPS) + list(self.blocks)))
            return
        self._bind(name, sig, args, kwargs, env, st.span)

    def _bind(self, fname, sig, args, kwargs, env, span) -> dict | None:
        out, ok = {}, True
        if len(args) > len(sig):
            takes = f"at most {plural(len(sig), 'positional argument')}" if sig \
                else "no positional arguments"
            self.diags.add("E205", f"`{fname}` takes {takes}, got {len(args)}", span,
                           _b._sig_hint(fname, sig))
            return None
        for a, v in zip(sig, args):
            out[a.name] = (v, a)
        names = [a.name for a in sig]
        for kw in kwargs:
            if kw.name not in names:
                self.diags.add("E203", f"`{fname}` has no argument `{kw.name}`", kw.span,
                               _b.suggest(kw.name, names) or _b._sig_hint(fname, sig))
                ok = False
                continue
            if kw.name in out:
                self.diags.add("E205", f"argument `{kw.name}` of `{fname}` given twice", kw.span)
                ok = False
                continue
            out[kw.name] = (kw.value, next(a for a in sig if a.name == kw.name))
        attrs = {}
        for a in sig:
            if a.name not in out:
                if a.default is REQUIRED:
                    self.diags.add("E204", f"`{fname}` needs argument `{a.name}`", span,
                                   _b._sig_hint(fname, sig))
                    ok = False
                else:
                    attrs[a.name] = a.default
                continue
            node, _ = out[a.name]
            try:
                val = self.eval(node, env)
            except _b._Skip:
                ok = False
                continue
            kinds = a.kind if isinstance(a.kind, tuple) else (a.kind,)
            # a bare word is a string only where the op names its words (block arguments
            # take strings in quotes)
            if isinstance(val, _b._Symbol) and not val.args and (a.kind is str or str in kinds
                                                                 and a.choices):
                val = val.name
            if isinstance(val, _b._Symbol) and not val.args and not val.kwargs:
                self.diags.add("E201", f"unknown name `{val.name}`", node.span, _b.suggest(val.name, env))
                ok = False
                continue
            if isinstance(val, bool) and bool not in kinds or not isinstance(val, kinds):
                want = "/".join(k.__name__ for k in kinds)
                self.diags.add("E206", f"argument `{a.name}` of `{fname}` must be {want}, got {val!r}",
                               node.span, _b._sig_hint(fname, sig))
                ok = False
                continue
            if a.choices and isinstance(val, str) and val not in a.choices:
                self.diags.add("E207", f"argument `{a.name}` of `{fname}` must be one of "
                               f"{', '.join(map(str, a.choices))}, got {val!r}", node.span,
                               _b.suggest(str(val), map(str, a.choices)))
                ok = False
                continue
            attrs[a.name] = val
        return attrs if ok else None
