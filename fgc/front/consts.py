"""Constants in `train`, `algorithm` and `group` sections.

``const LR = 0.05`` can be used wherever a section takes a number
(``learning_rate = LR``, ``weight_decay = WD / 10``, ``tangents = K``). The
sections are rewritten with every constant replaced by its value and every
arithmetic expression folded, before they are typed (:mod:`fgc.front.config`),
so the typed-config code sees plain numbers and its checks apply unchanged. A
name used in arithmetic that is no constant is E201, located.
"""

from __future__ import annotations

from dataclasses import replace

from fgc.front import syntax as S

# Settings whose names are selectors or words, never constants.
_NOT_NUMERIC = {"params", "dataset", "algorithm"}


def constants(spec: S.SpecFile) -> dict[str, S.Value]:
    """Each constant's folded value (Number, Bool or String); constants that do not
    fold to one are left out (the builder reports them)."""
    env: dict[str, S.Value] = {}
    for c in spec.of(S.ConstDecl):
        if c.name not in env:
            v = _fold(c.value, env, None)
            if isinstance(v, (S.Number, S.Bool, S.String)):
                env[c.name] = v
    return env


def resolve_section(sec: S.Section, env: dict[str, S.Value], diags) -> S.Section:
    """``sec`` with constants substituted and arithmetic folded."""
    if not env and not _has_arith(sec):
        return sec
    settings = tuple(replace(s, value=_fold_indices(s.value, env, diags)) if s.name == "params"
                     else s if s.name in _NOT_NUMERIC else replace(s, value=_fold(s.value, env, diags))
                     for s in sec.settings)
    return replace(sec, settings=settings)


def _has_arith(sec: S.Section) -> bool:
    return any("BinOp" in repr(s.value) or "Index" in repr(s.value) for s in sec.settings)


def _fold_indices(v: S.Value, env: dict, diags) -> S.Value:
    """Selectors stay words; only the bounds of ``blocks[a:b]`` may be constants."""
    if isinstance(v, S.List):
        return replace(v, items=tuple(_fold_indices(x, env, diags) for x in v.items))
    if isinstance(v, S.Index):
        return replace(v, start=None if v.start is None else _fold(v.start, env, diags),
                       stop=None if v.stop is None else _fold(v.stop, env, diags))
    return v


def _fold(v: S.Value, env: dict, diags) -> S.Value:
    if isinstance(v, S.Name):
        c = env.get(v.id)
        return replace(c, span=v.span) if c is not None else v
    if isinstance(v, S.Call):
        return replace(v, args=tuple(_fold(a, env, diags) for a in v.args),
                       kwargs=tuple(replace(k, value=_fold(k.value, env, diags)) for k in v.kwargs))
    if isinstance(v, S.List):
        return replace(v, items=tuple(_fold(x, env, diags) for x in v.items))
    if isinstance(v, S.BinOp):
        a, b = _fold(v.left, env, diags), _fold(v.right, env, diags)
        for side in (a, b):
            if not isinstance(side, S.Number):
                if diags is not None:
                    what = f"unknown name `{side.id}`" if isinstance(side, S.Name) else \
                        "arithmetic needs numbers"
                    diags.add("E201", what, side.span,
                              "define it with `const NAME = ...`" if isinstance(side, S.Name) else None)
                return v
        x, y = a.value, b.value
        if v.op == "+":
            r = x + y
        elif v.op == "*":
            r = x * y
        elif y == 0:
            if diags is not None:
                diags.add("E202", "division by zero", v.span)
            return v
        else:
            r = x // y if isinstance(x, int) and isinstance(y, int) and x % y == 0 else x / y
        return S.Number(r, v.span)
    return v
