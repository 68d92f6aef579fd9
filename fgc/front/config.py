"""Algorithm and parameter-group sections: from syntax to typed config (the ``train``
section's own checks are in :mod:`fgc.front.train_section`; its config type is here).

Algorithms are data. The seven of Ren et al. are written in the language itself
(``grammar/algorithms.fg``) and every spec sees them; a spec may add its own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fgc.front import syntax as S
from fgc.graph.build import Diags, suggest

ESTIMATORS = ("backprop", "forward", "project")
# Fixed random backward weights (Lillicrap et al. 2016; Nøkland 2016): model buffers, never trained.
FEEDBACK = ("feedback_alignment", "direct_feedback_alignment")
PERTURB = ("activity", "weights")
NOISE = ("gaussian", "rademacher")
GUESS = ("random",)  # local auxiliary nets and NTK guesses ([F]) plug in here
# How replica derivatives are credited to units: `exact` follows every path (unbiased);
# `ignore_norm` treats normalisation layers as if they kept channel groups and patches
# apart, as Ren et al.'s released code does (biased, lower variance; docs/language.md).
CREDIT = ("exact", "ignore_norm")
TARGETS = ("local", "global")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "lamb", "lars", "lion", "nadam")
SCHEDULES = {"constant": (), "linear": ("end",), "cosine": ("warmup_epochs", "end"),
             "step": ("every", "factor")}


@dataclass(frozen=True)
class Estimator:
    """How a parameter group turns losses into an update direction."""

    kind: str = "backprop"
    perturb: str | None = None  # forward only: "activity" or "weights"
    noise: str = "gaussian"
    tangents: int = 1
    aggregate: str = "mean"
    guess: str = "random"
    credit: str = "exact"
    scale: float = 1.0  # feedback kinds only: the random matrices' std relative to the default
    # project(...) only ([F], fgc.front.projection): the gradient target, the space and
    # granularity of the projection, its ε, and the batch-norm mode of the guess pass.
    target: str | None = None
    space: str | None = None
    granularity: str | None = None
    eps: float = 1e-12
    guess_bn: str = "eval"
    chunk: int | None = None  # tangents evaluated at once (None: all K)
    recompute: bool = False  # project(...) only: keep only what crosses blocks

    def describe(self) -> str:
        if self.kind == "backprop":
            return "backprop"
        if self.kind in FEEDBACK:
            return self.kind if self.scale == 1.0 else f"{self.kind}(scale={self.scale:g})"
        if self.kind == "project":
            from fgc.front.projection import describe
            return describe(self)
        credit = "" if self.credit == "exact" else f", credit={self.credit}"
        credit += "" if self.aggregate == "mean" else f", aggregate={self.aggregate}"
        credit += "" if self.chunk is None else f", chunk={self.chunk}"
        return f"forward({self.perturb}, {self.noise}, K={self.tangents}{credit})"


def aggregations() -> tuple[str, ...]:
    """The aggregation names the language accepts: those registered in
    :data:`fgc.learning.aggregate.AGGREGATIONS` (a new registration needs no edit here)."""
    from fgc.learning.aggregate import AGGREGATIONS
    return tuple(AGGREGATIONS)


@dataclass(frozen=True)
class Algorithm:
    name: str
    target: str = "global"
    greedy: bool = False
    estimator: Estimator = Estimator()
    source: str = "preset"


@dataclass(frozen=True)
class Call:
    """An optax optimizer or schedule by name with keyword arguments."""

    name: str
    kwargs: tuple[tuple[str, object], ...] = ()

    def as_dict(self) -> dict:
        return dict(self.kwargs)


@dataclass(frozen=True)
class TrainConfig:
    dataset: str | None = None
    batch_size: int = 128
    epochs: int = 1
    seed: int = 0
    optimizer: Call = Call("sgd", (("learning_rate", 0.01), ("momentum", 0.9)))
    schedule: Call = Call("linear", (("end", 0.0),))
    weight_decay: float = 0.0
    algorithm: str | None = None
    flip: bool = False
    eval_batch_size: int = 1000
    # augmentations of the training batches, in order: ((name, ((arg, value), ...)), ...)
    # (fgc.training.augment), applied on the device inside the step
    augment: tuple = ()
    decay_on: str = "weights"  # which parameters weight decay reaches: weights or all
    views: int = 1  # augmented views per example (2 for a contrastive loss)
    # the policy that makes those views (`augment = byol(...)`), fgc.training.views.AUGMENTS
    view_augment: Call | None = None
    # how matmuls and convolutions are computed (fgc.lowering.modules.PRECISIONS); the
    # parameters, optimizer state, norms and losses stay float32 whatever it is
    precision: str = "default"


@dataclass(frozen=True)
class ParamGroup:
    name: str
    select: tuple  # selector words (str) and block-instance indices (syntax.Index)
    lr_scale: float = 1.0
    weight_decay: float | None = None
    estimator: Estimator | None = None
    optimizer: Call | None = None
    span: object = field(default=None, compare=False)


def _presets_text() -> str:
    local = Path(__file__).resolve().parents[2] / "grammar" / "algorithms.fg"
    if local.is_file():
        return local.read_text(encoding="utf-8")
    return resources.files("fgc.grammar").joinpath("algorithms.fg").read_text(encoding="utf-8")


@functools.cache
def presets() -> dict[str, Algorithm]:
    """The built-in algorithms, parsed from ``algorithms.fg``."""
    from fgc.front.parse import parse
    spec = parse(_presets_text(), "<fgc>/algorithms.fg")
    d = Diags()
    out = {}
    for sec in spec.of(S.Section):
        algo = algorithm_from(sec, d)
        if algo is not None:
            out[algo.name] = algo
    assert not d, d.items  # the shipped presets are valid by construction
    return out


def _word(v) -> str | None:
    return v.id if isinstance(v, S.Name) else v.value if isinstance(v, S.String) else None


def _num(v) -> float | int | None:
    return v.value if isinstance(v, S.Number) else None


def count_setting(v: S.Value, name: str, d: Diags, most: int | None = None,
                  hint: str | None = None) -> int | None:
    """A setting that counts things (tangents, chunk): an integer from 1 to ``most``; one
    check and one message wherever such a setting is parsed. None after reporting E206."""
    n = _num(v)
    if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= (most or n):
        return n
    within = "≥ 1" if most is None else f"from 1 to tangents ({most})"
    d.add("E206", f"{name} must be an integer {within}", v.span, hint)
    return None


def _settings(sec: S.Section, allowed: tuple, d: Diags) -> dict:
    out = {}
    for s in sec.settings:
        if s.name not in allowed:
            d.add("E203", f"unknown {sec.kind} setting `{s.name}`", s.span,
                  suggest(s.name, allowed) or f"settings: {', '.join(allowed)}")
        elif s.name in out:
            d.add("E101", f"`{s.name}` is set twice", s.span)
        else:
            out[s.name] = s.value
    return out


def _choice(v, choices, what, d: Diags):
    w = _word(v)
    if w not in choices:
        d.add("E207", f"{what} must be one of {', '.join(choices)}", getattr(v, "span", None),
              suggest(str(w), choices))
        return None
    return w


def estimator_from(v: S.Value, d: Diags) -> Estimator | None:
    if isinstance(v, S.Name) and v.id == "backprop":
        return Estimator("backprop")
    if (v.func if isinstance(v, S.Call) else _word(v)) in FEEDBACK:
        return feedback_estimator_from(v, d)
    if isinstance(v, S.Call) and v.func == "backprop" and (v.args or v.kwargs):
        d.add("E205", "`backprop` takes no arguments", v.span,
              "write `estimator = backprop` (the exact gradient; no feedback variants)")
        return None
    if not isinstance(v, S.Call) or v.func not in ESTIMATORS:
        name = v.func if isinstance(v, S.Call) else _word(v)
        d.add("E207", f"unknown estimator `{name}`", getattr(v, "span", None),
              suggest(str(name), ESTIMATORS + FEEDBACK) or "use backprop, forward(perturb = "
              "activity), feedback_alignment or direct_feedback_alignment")
        return None
    if v.func == "backprop":
        return Estimator("backprop")
    if v.func == "project":
        from fgc.front.projection import project_from
        return project_from(v, d)
    if v.args:
        d.add("E205", "forward(...) takes keyword arguments only", v.span,
              "forward(perturb = activity, noise = gaussian, tangents = 1)")
        return None
    kw = {}
    allowed = ("perturb", "noise", "tangents", "aggregate", "guess", "credit", "chunk")
    for k in v.kwargs:
        if k.name not in allowed:
            d.add("E203", f"forward(...) has no argument `{k.name}`", k.span,
                  suggest(k.name, allowed) or f"arguments: {', '.join(allowed)}")
            return None
        if k.name in kw:
            d.add("E205", f"argument `{k.name}` of `forward` given twice", k.span)
            return None
        kw[k.name] = k.value
    if "perturb" not in kw:
        d.add("E204", "forward(...) needs `perturb = activity` or `perturb = weights`", v.span)
        return None
    out = {"perturb": _choice(kw["perturb"], PERTURB, "perturb", d)}
    for name, choices in (("noise", NOISE), ("aggregate", aggregations()), ("guess", GUESS),
                          ("credit", CREDIT)):
        if name in kw:
            out[name] = _choice(kw[name], choices, name, d)
    if "tangents" in kw:
        t = count_setting(kw["tangents"], "tangents", d)
        if t is None:
            return None
        out["tangents"] = t
    if "chunk" in kw:
        k = out.get("tangents", 1)
        c = count_setting(kw["chunk"], "chunk", d, most=k,
                          hint="chunk = C evaluates the K tangents C at a time; it need not divide K")
        if c is None:
            return None
        out["chunk"] = c
    if any(x is None for x in out.values()):
        return None
    return Estimator("forward", **out)


def feedback_estimator_from(v: S.Value, d: Diags) -> Estimator | None:
    """``feedback_alignment`` / ``direct_feedback_alignment``, bare or with ``(scale = S)``."""
    if isinstance(v, S.Name):
        return Estimator(v.id)
    if v.args:
        d.add("E205", f"{v.func}(...) takes keyword arguments only", v.span,
              f"{v.func}(scale = 1.0)")
        return None
    scale = 1.0
    for i, k in enumerate(v.kwargs):
        if k.name != "scale":
            d.add("E203", f"{v.func}(...) has no argument `{k.name}`", k.span,
                  suggest(k.name, ("scale",)) or "arguments: scale")
            return None
        if i:
            d.add("E205", f"argument `scale` of `{v.func}` given twice", k.span)
            return None
        n = _num(k.value)
        if n is None or isinstance(n, bool) or not n > 0:
            d.add("E206", "scale must be a number above 0", k.span,
                  "the feedback matrices' std relative to the layer's own initial std, e.g. 1.0")
            return None
        scale = float(n)
    return Estimator(v.func, scale=scale)


def algorithm_from(sec: S.Section, d: Diags, source: str = "preset") -> Algorithm | None:
    if not sec.name:
        d.add("E107", "an algorithm needs a name", sec.span, "write `algorithm my-algo { ... }`")
        return None
    st = _settings(sec, ("target", "greedy", "estimator"), d)
    kw = {}
    if "target" in st:
        kw["target"] = _choice(st["target"], TARGETS, "target", d)
    if "greedy" in st:
        if not isinstance(st["greedy"], S.Bool):
            d.add("E206", "greedy must be true or false", st["greedy"].span)
            kw["greedy"] = None  # keep checking the other settings
        else:
            kw["greedy"] = st["greedy"].value
    if "estimator" in st:
        kw["estimator"] = estimator_from(st["estimator"], d)
    if isinstance(st.get("estimator"), S.Call) and st["estimator"].func == "project":
        from fgc.front.projection import project_algorithm
        return project_algorithm(sec, st, kw, d, source)
    if any(v is None for v in kw.values()):
        return None
    return Algorithm(sec.name, source=source, **kw)


def _call(v, choices, what, d: Diags) -> Call | None:
    if isinstance(v, S.Name):
        v = S.Call(v.id, (), (), v.span)
    if not isinstance(v, S.Call) or v.func not in choices:
        name = v.func if isinstance(v, S.Call) else "?"
        d.add("E207", f"unknown {what} `{name}`", getattr(v, "span", None),
              suggest(name, choices) or f"choose from {', '.join(choices)}")
        return None
    if v.args:
        d.add("E205", f"{what} arguments are given by name", v.span,
              f"e.g. {v.func}(learning_rate = 0.01)")
        return None
    kws = []
    for k in v.kwargs:
        if any(k.name == name for name, _ in kws):
            d.add("E205", f"argument `{k.name}` of `{v.func}` given twice", k.span)
            return None
        val = k.value
        if isinstance(val, (S.Number, S.Bool, S.String)):
            kws.append((k.name, val.value))
        elif isinstance(val, S.Name):
            kws.append((k.name, val.id))
        else:
            d.add("E206", f"argument `{k.name}` must be a number, bool or word", k.span)
            return None
    return Call(v.func, tuple(kws))


def _check_optax_kwargs(c: Call, span, d: Diags) -> None:
    import inspect
    import optax
    fn = getattr(optax, c.name)
    params = inspect.signature(fn).parameters
    unknown = [k for k, _ in c.kwargs if k not in params]
    for k in unknown:
        d.add("E203", f"optax.{c.name} has no argument `{k}`", span,
              suggest(k, params) or f"arguments: {', '.join(params)}")
    for k, v in c.kwargs:
        default = params[k].default if k in params else None
        if isinstance(v, str) and (k == "learning_rate" or isinstance(default, (int, float))
                                   and not isinstance(default, bool)):
            d.add("E206", f"`{k}` of {c.name} must be a number, and `{v}` is no constant", span,
                  f"write a number, or define it with `const {v} = ...`")
    lr = c.as_dict().get("learning_rate")
    if lr is not None and not isinstance(lr, str) and (isinstance(lr, bool) or not lr > 0):
        d.add("E206", f"learning_rate must be a number above 0, got {lr}", span,
              "e.g. learning_rate = 0.01; the optimizer already steps against the gradient")
    if "learning_rate" in params and "learning_rate" not in c.as_dict() and not unknown:
        d.add("E204", f"optax.{c.name} needs learning_rate", span,
              f"e.g. {c.name}(learning_rate = 0.01)")



def group_from(sec: S.Section, d: Diags) -> ParamGroup | None:
    if not sec.name:
        d.add("E107", "a parameter group needs a name", sec.span, "write `group readout { ... }`")
        return None
    st = _settings(sec, ("params", "lr_scale", "weight_decay", "estimator", "optimizer"), d)
    if "params" not in st:
        d.add("E204", f"group `{sec.name}` needs `params = ...`", sec.span,
              "e.g. params = heads(final), params = blocks, params = [stem, mixer]")
        return None
    sel = st["params"].items if isinstance(st["params"], S.List) else (st["params"],)
    select = []
    for s in sel:
        if isinstance(s, S.Call) and s.func == "heads" and len(s.args) == 1 and not s.kwargs \
                and isinstance(s.args[0], S.Name):
            select.append(f"heads:{s.args[0].id}")
        elif isinstance(s, S.Name):
            select.append(s.id)
        elif isinstance(s, S.Index):  # block instances: resolved against the graph when planned
            select.append(s)
        else:
            d.add("E206", "params selects `blocks`, `heads`, `heads(LOSS)` or a block name",
                  getattr(s, "span", None))
            return None
    kw = {}
    for key in ("lr_scale", "weight_decay"):
        if key in st:
            n = _num(st[key])
            if n is None or n < 0:
                d.add("E206", f"{key} must be a number ≥ 0", st[key].span)
                return None
            kw[key] = float(n)
    if "estimator" in st:
        kw["estimator"] = estimator_from(st["estimator"], d)
        if kw["estimator"] is None:
            return None
    if "optimizer" in st:
        kw["optimizer"] = _call(st["optimizer"], OPTIMIZERS, "optimizer", d)
        if kw["optimizer"] is None:
            return None
        _check_optax_kwargs(kw["optimizer"], st["optimizer"].span, d)
    return ParamGroup(sec.name, tuple(select), span=sec.span, **kw)
