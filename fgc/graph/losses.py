"""Elaboration of `loss` declarations: targets, heads and replication options.

Part of :class:`fgc.graph.build.Builder` (a mixin: it reads the builder's diagnostics,
constants, blocks and heads), kept apart so that each module stays readable."""

from __future__ import annotations

from fgc.front import syntax as S
from fgc.graph.ir import EdgeData, LossInfo, NodeData
from fgc.graph import build as _b  # shared helpers; used only at call time (no cycle at import)
from fgc.graph.loss_kinds import LOSS_KINDS
from fgc.graph.ops import OPS, REPLICATE_AXES


class LossElaboration:
    """Builds every loss instance: where it attaches, its head ops and its options."""

    def _loss(self, d: S.LossDecl):
        hname = _b.st_name(d.head)
        alias = self.consts.get(hname)  # `const AUX = cnn_aux`: a head picked by a constant
        if hname not in self.heads and isinstance(alias, _b._Symbol) and not alias.args \
                and not alias.kwargs:
            hname = alias.name
        if hname not in self.heads:
            self.diags.add("E201", f"unknown head `{hname}`", d.head.span,
                           _b.suggest(hname, self.heads) or "define it with `head NAME = ...`")
            return
        self.used_defs.add(hname)
        hd = self.heads[hname]
        opts = {}
        allowed = ("replicate", "groups", "kind", "local")
        # a kind's own options are known once the kind is: look it up first
        kind_opt = next((o for o in d.options if o.name == "kind"), None)
        declared = LOSS_KINDS.get(getattr(kind_opt.value, "id", None)) if kind_opt else \
            LOSS_KINDS["xent"]
        if declared is not None:
            allowed = allowed + tuple(o.name for o in declared.options)
        for o in d.options:
            if o.name not in allowed:
                owners = [k.name for k in LOSS_KINDS.values() if k.option(o.name)]
                self.diags.add("E203", f"unknown loss option `{o.name}`", o.span,
                               f"`{o.name}` is an option of `kind = {owners[0]}`" if owners else
                               _b.suggest(o.name, allowed) or f"options: {', '.join(allowed)}")
                continue
            if o.name in opts:
                self.diags.add("E101", f"`{o.name}` is given twice", o.span, "give it once")
                return
            try:
                opts[o.name] = self.eval(o.value, self.consts)
            except _b._Skip:
                return
        where = {o.name: o.value.span for o in d.options}  # point at the bad option
        kind = opts.get("kind", _b._Symbol("xent", None))
        kind = kind.name if isinstance(kind, _b._Symbol) else kind
        if kind not in LOSS_KINDS:
            self.diags.add("E207", f"unknown loss kind `{kind}`", where.get("kind", d.span),
                           f"supported: {', '.join(LOSS_KINDS)}")
            return
        kind_opts = LOSS_KINDS[kind].defaults()
        for o in LOSS_KINDS[kind].options:
            if o.name in opts:
                v = opts[o.name]
                v = {"true": True, "false": False}.get(v.name, v) if isinstance(v, _b._Symbol) else v
                bad = o.check(v)
                if bad:
                    self.diags.add("E206", f"`{o.name}` of a `{kind}` loss {bad}", where[o.name],
                                   o.doc or None)
                    return
                kind_opts[o.name] = v
        rep = opts.get("replicate", [])
        rep = rep if isinstance(rep, list) else [rep]
        axes = []
        for r in rep:
            rn = r.name if isinstance(r, _b._Symbol) else r
            if rn not in REPLICATE_AXES:
                self.diags.add("E207", f"cannot replicate over `{rn}`", where.get("replicate", d.span),
                               _b.suggest(str(rn), REPLICATE_AXES) or "use [patches], [groups] or [patches, groups]")
                return
            if rn in axes:
                self.diags.add("E101", f"`{rn}` is listed twice in `replicate`",
                               where.get("replicate", d.span))
                return
            axes.append(rn)
        groups = opts.get("groups", 1)
        if "groups" in axes and "groups" not in opts:
            self.diags.add("E204", "replicating over groups needs `groups = G`", d.span,
                           "add `, groups = G` with the block's group count")
            return
        if not isinstance(groups, int) or groups < 1:
            self.diags.add("E206", "`groups` must be a positive integer", where.get("groups", d.span))
            return
        also_local = opts.get("local", False)
        if not isinstance(also_local, bool):
            self.diags.add("E206", "local must be true or false", where["local"])
            return
        targets = self._targets(d.target)
        if also_local and any(w != "output" for w, _ in targets or ()):
            self.diags.add("E206", "only a loss on `output` can be `local = true`",
                           where["local"], "every other loss is local already; drop the option")
            return
        if not targets:
            for st in hd.pipe.stages:
                self._lint(st, {**self.consts, **{p: 1 for p in hd.params}})
            return
        # Bind the head's parameters once per loss.
        hsig = tuple(_b._block_arg(p) for p in hd.params)
        hargs = d.head.args if isinstance(d.head, S.Call) else ()
        hkw = d.head.kwargs if isinstance(d.head, S.Call) else ()
        bound = self._bind(hname, hsig, hargs, hkw, self.consts, d.head.span)
        if bound is None:
            return
        for where, src in targets:
            lid = f"loss:{d.name}@{where}"
            if lid in self.graph.losses:
                self.diags.add("E101", f"loss `{d.name}` attached twice to `{where}`", d.span)
                continue
            scope = _b._Scope({**self.consts, **bound}, {"in": src}, lid,
                           self.graph.node(src).block, self.graph.node(src).block_def)
            cur = src
            nodes = []
            for st in hd.pipe.stages:
                if isinstance(st, S.Repeat) or _b.st_name(st) not in OPS:
                    self.diags.add("E117", f"heads are made of ops; `{_b.st_name(st)}` is not an op",
                                   st.span, _b.suggest(_b.st_name(st), OPS))
                    cur = None
                    break
                cur = self._op(st, cur, scope, role="head", loss=lid)
                if cur is None:
                    break
                nodes.append(cur)
            if cur is None:
                continue
            self.graph.add_node(lid, NodeData("loss", "loss", {"kind": kind, "name": d.name},
                                              scope.block, scope.block_def, lid, span=d.span))
            self.graph.add_edge(cur, lid, EdgeData(0))
            self.graph.losses[lid] = LossInfo(lid, d.name, kind, src, nodes,
                                              where == "output",
                                              tuple(axes), groups, span=d.span,
                                              also_local=also_local,
                                              options=dict(kind_opts))

    def _targets(self, v: S.Value):
        items = v.items if isinstance(v, S.List) else (v,)
        out = []
        insts = self.graph.meta["blocks"]
        for it in items:
            if isinstance(it, S.Index):
                picked = self._instances(it, insts)
                if picked is None:
                    return None
                out += [(b, self._block_out(b)) for b in picked]
                continue
            if not isinstance(it, S.Name):
                self.diags.add("E206", "a loss attaches to a name: `blocks`, `output`, a block "
                               "or a network value", it.span)
                return None
            n = it.id
            if n == "blocks":
                if not insts:
                    self.diags.add("E118", "`on blocks` but the network has no blocks", it.span)
                    return None
                out += [(b, self._block_out(b)) for b in insts]
            elif n == "output":
                if self.graph.meta.get("output"):
                    out.append(("output", self.graph.meta["output"]))
            elif n in self.blocks:
                bs = [b for b in insts if b.rsplit(".", 1)[0] == n]
                out += [(b, self._block_out(b)) for b in bs]
            elif n == self.graph.node("input").attrs.get("name"):
                self.diags.add("E206", f"a loss cannot attach to the input `{n}`", it.span,
                               "a head learns from features the network computes; attach it to "
                               "`output`, `blocks`, a block name or a network value")
                return None
            elif n in self.net_values:
                out.append((n, self.net_values[n]))
            else:
                inp = self.graph.node("input").attrs.get("name")
                values = [v for v in self.net_values if v != inp]
                self.diags.add("E201", f"unknown loss target `{n}`", it.span,
                               _b.suggest(n, ["blocks", "output", *self.blocks, *values])
                               or "attach to `blocks`, `output`, a block name or a network value")
                return None
        return [(w, s) for w, s in out if s is not None]

    def _instances(self, it: S.Index, insts: list[str]) -> list[str] | None:
        """``blocks[i]``, ``NAME[a:b]``: the instances a loss target picks, or a diagnostic."""
        from fgc.graph import instances as I
        if it.base != "blocks" and it.base not in self.blocks:
            self.diags.add("E201", f"unknown block `{it.base}` in `{I.show(it)}`", it.span,
                           _b.suggest(it.base, ["blocks", *self.blocks])
                           or "index `blocks` or a block name")
            return None
        pool = insts if it.base == "blocks" else [b for b in insts if b.rsplit(".", 1)[0] == it.base]
        try:
            bounds = [I.bound(None if b is None else self.eval(b, self.consts))
                      for b in (it.start, it.stop)]
            return I.select(it, pool, *bounds)
        except _b._Skip:
            return None
        except I.IndexProblem as e:
            self.diags.add(e.code, str(e), it.span, e.hint)
            return None

    def _block_out(self, inst: str) -> str | None:
        return self.graph.meta.get("block_outputs", {}).get(inst)
