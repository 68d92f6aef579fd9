"""``project(...)``: the gradient-guess estimators of Fournier et al. 2023, from syntax.

Every update projects a gradient *target* ``G`` onto a gradient *guess* ``G̃``::

    ĝ = ⟨G, G̃⟩ / (‖G̃‖² + ε) · G̃

and the spec says all four choices explicitly (docs/language.md §3.8)::

    estimator = project(target = global, guess = local, space = activity,
                        granularity = sample)

Only the syntax and its checks live here; the plan decides which block and which
auxiliary head every parameter's target and guess come from
(:mod:`fgc.plan.guesses`), and :mod:`fgc.learning.projection` runs it.
"""

from __future__ import annotations

from fgc.front import syntax as S
from fgc.graph.build import Diags, suggest

TARGETS = ("global", "local", "above")
GUESSES = ("random", "local", "ntk", "fixed", "above", "global")
SPACES = ("activity", "weights")
GRANULARITY = {  # space -> the granularities it accepts
    "activity": ("sample", "block", "global"),
    "weights": ("sample", "tensor", "block", "global"),
}
NOISE = ("gaussian", "rademacher")
GUESS_BN = ("eval", "train")
ARGS = ("target", "guess", "space", "granularity", "noise", "eps", "guess_bn", "chunk",
        "recompute")
REQUIRED = ("guess", "space", "granularity")


def describe(est) -> str:
    noise = f", {est.noise}" if est.guess == "random" else ""
    eps = "" if est.eps == 1e-12 else f", eps={est.eps:g}"
    bn = "" if est.guess_bn == "eval" else f", guess_bn={est.guess_bn}"
    bn += "" if est.chunk is None else f", chunk={est.chunk}"
    bn += ", recompute" if est.recompute else ""
    return (f"project({est.target} onto {est.guess}{noise}, {est.space}, "
            f"per {est.granularity}{eps}{bn})")


def _word(v):
    return v.id if isinstance(v, S.Name) else v.value if isinstance(v, S.String) else None


def project_from(v: S.Call, d: Diags):
    """The estimator of ``project(...)``, or None after reporting every problem."""
    from fgc.front.config import Estimator
    if v.args:
        d.add("E205", "project(...) takes keyword arguments only", v.span,
              "project(target = global, guess = local, space = activity, granularity = sample)")
        return None
    kw, ok = {}, True
    for k in v.kwargs:
        if k.name not in ARGS:
            d.add("E203", f"project(...) has no argument `{k.name}`", k.span,
                  suggest(k.name, ARGS) or f"arguments: {', '.join(ARGS)}")
            ok = False
        elif k.name in kw:
            d.add("E205", f"argument `{k.name}` of `project` given twice", k.span)
            ok = False
        else:
            kw[k.name] = k.value
    missing = [r for r in REQUIRED if r not in kw]
    if missing:
        d.add("E204", f"project(...) needs {', '.join(f'`{m}`' for m in missing)}: the guess, "
              "the space and the granularity of the projection are always explicit", v.span,
              "e.g. project(target = global, guess = local, space = activity, "
              "granularity = sample)")
        ok = False
    out = {}
    for name, choices in (("target", TARGETS), ("guess", GUESSES), ("space", SPACES),
                          ("noise", NOISE), ("guess_bn", GUESS_BN)):
        if name in kw:
            w = _word(kw[name])
            if w not in choices:
                d.add("E207", f"{name} of project(...) must be one of {', '.join(choices)}",
                      getattr(kw[name], "span", None), suggest(str(w), choices))
                ok = False
            else:
                out[name] = w
    if "granularity" in kw:
        w = _word(kw["granularity"])
        allowed = GRANULARITY.get(out.get("space"), GRANULARITY["weights"])
        if w not in allowed:
            hint = suggest(str(w), allowed)
            if out.get("space") == "activity" and w == "tensor":
                hint = "a block's output is one tensor: write `granularity = block`"
            d.add("E207", f"granularity in {out.get('space', 'this')} space must be one of "
                  f"{', '.join(allowed)}", getattr(kw["granularity"], "span", None), hint)
            ok = False
        else:
            out["granularity"] = w
    if "noise" in out and out.get("guess", "random") != "random":
        d.add("E206", f"`noise` draws a random guess, but the guess is `{out['guess']}`",
              kw["noise"].span, "drop `noise`, or write `guess = random`")
        ok = False
    if "eps" in kw:
        n = kw["eps"].value if isinstance(kw["eps"], S.Number) else None
        if n is None or isinstance(n, bool) or n < 0:
            d.add("E206", "eps must be a number ≥ 0", kw["eps"].span,
                  "e.g. eps = 1e-12 (it keeps a vanishing guess from blowing up)")
            ok = False
        else:
            out["eps"] = float(n)
    if "chunk" in kw:
        from fgc.front.config import count_setting
        n = count_setting(kw["chunk"], "chunk", d,
                          hint="chunk = C runs C per-example jvps at once where batch statistics "
                               "couple the examples (memory grows with C; the products are the same)")
        ok = ok and n is not None
        if n is not None:
            out["chunk"] = n
    if "recompute" in kw:
        r = kw["recompute"]
        if not isinstance(r, S.Bool):
            d.add("E206", "recompute must be true or false", r.span)
            ok = False
        elif r.value and "space" in out and "granularity" in out and (
                out["space"] != "activity" or out["granularity"] == "global"):
            d.add("E206", "recompute = true runs the projection one block at a time, so it "
                  "needs space = activity and a granularity of sample or block", r.span,
                  "drop recompute, or write space = activity, granularity = block")
            ok = False
        else:
            out["recompute"] = r.value
    if not ok:
        return None
    out.setdefault("target", "global")
    return Estimator("project", **out)


def project_algorithm(sec: S.Section, settings: dict, kw: dict, d: Diags, source: str):
    """An ``algorithm`` section whose estimator is ``project(...)``: its target is the
    projection's, and no stop-gradient separates the blocks (the rule cuts what it needs)."""
    from fgc.front.config import Algorithm
    bad = [k for k in ("target", "greedy") if k in settings]
    for k in bad:
        d.add("E203", f"`{k}` of a project(...) algorithm is decided by the projection",
              settings[k].span, "write the gradient target inside it: "
              "project(target = global | local | above, ...); the blocks are never greedy-cut")
    est = kw.get("estimator")
    if bad or est is None:
        return None
    return Algorithm(sec.name, target="global" if est.target == "global" else "local",
                     greedy=False, estimator=est, source=source)


def is_project(est) -> bool:
    return est is not None and est.kind == "project"


__all__ = ["GRANULARITY", "GUESSES", "SPACES", "TARGETS", "describe", "is_project",
           "project_algorithm", "project_from"]
