"""Algorithm, training and parameter-group sections: from syntax to typed config.

Algorithms are data. The seven of Ren et al. are written in the language itself
(``grammar/algorithms.fg``) and every spec sees them; a spec may add its own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from fgc.front import syntax as S
from fgc.graph.build import Diags, suggest

ESTIMATORS = ("backprop", "forward")
PERTURB = ("activity", "weights")
NOISE = ("gaussian", "rademacher")
AGGREGATE = ("mean",)  # orthogonal projection ([M]) plugs in here
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

    def describe(self) -> str:
        if self.kind == "backprop":
            return "backprop"
        credit = "" if self.credit == "exact" else f", credit={self.credit}"
        return f"forward({self.perturb}, {self.noise}, K={self.tangents}{credit})"


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
    views: int = 1  # augmented views per example (2 for a contrastive loss)
    augment: Call | None = None  # an augmentation policy, fgc.training.views.AUGMENTS


@dataclass(frozen=True)
class ParamGroup:
    name: str
    select: tuple[str, ...]
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
    if isinstance(v, S.Call) and v.func == "backprop" and (v.args or v.kwargs):
        d.add("E205", "`backprop` takes no arguments", v.span,
              "write `estimator = backprop` (the exact gradient; no feedback variants)")
        return None
    if not isinstance(v, S.Call) or v.func not in ESTIMATORS:
        name = v.func if isinstance(v, S.Call) else _word(v)
        d.add("E207", f"unknown estimator `{name}`", getattr(v, "span", None),
              suggest(str(name), ESTIMATORS) or "use backprop or forward(perturb = activity)")
        return None
    if v.func == "backprop":
        return Estimator("backprop")
    if v.args:
        d.add("E205", "forward(...) takes keyword arguments only", v.span,
              "forward(perturb = activity, noise = gaussian, tangents = 1)")
        return None
    kw = {}
    allowed = ("perturb", "noise", "tangents", "aggregate", "guess", "credit")
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
    for name, choices in (("noise", NOISE), ("aggregate", AGGREGATE), ("guess", GUESS),
                          ("credit", CREDIT)):
        if name in kw:
            out[name] = _choice(kw[name], choices, name, d)
    if "tangents" in kw:
        t = _num(kw["tangents"])
        if not isinstance(t, int) or t < 1:
            d.add("E206", "tangents must be a positive integer", kw["tangents"].span)
            return None
        out["tangents"] = t
    if any(x is None for x in out.values()):
        return None
    return Estimator("forward", **out)


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


TRAIN_KEYS = ("dataset", "batch_size", "epochs", "seed", "optimizer", "schedule",
              "weight_decay", "algorithm", "flip", "eval_batch_size", "views", "augment")
AUGMENT_ARGS = {"byol": {"min_area": (int, float), "strength": (int, float), "blur": bool}}


def train_from(sec: S.Section | None, d: Diags) -> TrainConfig:
    cfg = TrainConfig()
    if sec is None:
        return cfg
    st = _settings(sec, TRAIN_KEYS, d)
    kw = {}
    for key in ("batch_size", "epochs", "seed", "eval_batch_size"):
        if key in st:
            n = _num(st[key])
            if not isinstance(n, int) or n < (0 if key == "seed" else 1):
                d.add("E206", f"{key} must be " + ("an integer ≥ 0" if key == "seed"
                                                   else "a positive integer"), st[key].span)
            else:
                kw[key] = n
    if "weight_decay" in st:
        n = _num(st["weight_decay"])
        if n is None or n < 0:
            d.add("E206", "weight_decay must be a number ≥ 0", st["weight_decay"].span)
        else:
            kw["weight_decay"] = float(n)
    for key in ("dataset", "algorithm"):
        if key in st:
            w = _word(st[key])
            if w is None:
                d.add("E206", f"{key} must be a name or string", st[key].span)
            elif key == "dataset" and not _known_dataset(w):
                from fgc.training.data import BUILTIN_DATASETS
                d.add("E207", f"unknown dataset `{w}`", st[key].span,
                      suggest(w, BUILTIN_DATASETS) or f"use {' or '.join(BUILTIN_DATASETS)}, or "
                      'a path to an .npz file in quotes, e.g. "data/mine.npz"')
            else:
                kw[key] = w
    if "flip" in st:
        if isinstance(st["flip"], S.Bool):
            kw["flip"] = st["flip"].value
        else:
            d.add("E206", "flip must be true or false", st["flip"].span)
    _views_from(st, kw, d)
    if "optimizer" in st:
        c = _call(st["optimizer"], OPTIMIZERS, "optimizer", d)
        if c is not None:
            _check_optax_kwargs(c, st["optimizer"].span, d)
            kw["optimizer"] = c
    if "schedule" in st:
        c = _call(st["schedule"], tuple(SCHEDULES), "schedule", d)
        if c is not None:
            for k, _ in c.kwargs:
                if k not in SCHEDULES[c.name]:
                    d.add("E203", f"schedule {c.name} has no argument `{k}`", st["schedule"].span,
                          f"arguments: {', '.join(SCHEDULES[c.name]) or 'none'}")
            kw["schedule"] = c
    return replace(cfg, **kw)


def _views_from(st: dict, kw: dict, d: Diags) -> None:
    """``views = 1 | 2`` and ``augment = byol(min_area = ..., strength = ..., blur = ...)``."""
    if "views" in st:
        n = _num(st["views"])
        if n not in (1, 2) or isinstance(n, float):
            d.add("E206", "views must be 1 or 2", st["views"].span,
                  "2 gives each example two augmented views (a contrastive loss needs them)")
        else:
            kw["views"] = n
    if "augment" in st:
        c = _call(st["augment"], tuple(AUGMENT_ARGS), "augmentation", d)
        if c is None:
            return
        args = AUGMENT_ARGS[c.name]
        for k, v in c.kwargs:
            if k not in args:
                d.add("E203", f"{c.name}(...) has no argument `{k}`", st["augment"].span,
                      suggest(k, args) or f"arguments: {', '.join(args)}")
            elif not isinstance(v, args[k]) or (args[k] is not bool and isinstance(v, bool)):
                d.add("E206", f"`{k}` of {c.name} must be "
                      + ("true or false" if args[k] is bool else "a number"), st["augment"].span)
            elif k == "min_area" and not 0 < v <= 1:
                d.add("E206", f"min_area must be in (0, 1], got {v}", st["augment"].span,
                      "the smallest crop, as a fraction of the image's area (BYOL: 0.08)")
            else:
                continue
            return
        kw["augment"] = c


def _known_dataset(name: str) -> bool:
    """What ``fgc.training.data.load_dataset`` accepts by name: a built-in, or an ``.npz`` path."""
    from fgc.training.data import BUILTIN_DATASETS  # numpy and PIL: only when a spec names a dataset
    return name.lower() in BUILTIN_DATASETS or name.lower().endswith(".npz")


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
