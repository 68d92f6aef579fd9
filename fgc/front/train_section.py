"""The ``train { ... }`` section: from syntax to a :class:`~fgc.front.config.TrainConfig`.

Dataset, batch, epochs, seed, the optimizer and its schedule, weight decay, the
augmentation policy, the views a contrastive loss compares and the precision of
products; every setting checked here, with its span, before anything is built.
"""

from __future__ import annotations

from dataclasses import replace

from fgc.front import syntax as S
from fgc.front.config import (OPTIMIZERS, SCHEDULES, TrainConfig, _call,
                              _check_optax_kwargs, _choice, _num, _settings, _word)
from fgc.graph.build import Diags, suggest

__all__ = ["TRAIN_KEYS", "augment_from", "train_from"]


TRAIN_KEYS = ("dataset", "batch_size", "epochs", "seed", "optimizer", "schedule",
              "weight_decay", "algorithm", "flip", "eval_batch_size", "augment", "decay_on",
              "views", "precision")
DECAY_ON = ("weights", "all")
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
    if "augment" in st and not _is_view_policy(st["augment"]):
        aug = augment_from(st["augment"], d)
        if aug is not None:
            kw["augment"] = aug
    if "decay_on" in st:
        w = _choice(st["decay_on"], DECAY_ON, "decay_on", d)
        if w is not None:
            kw["decay_on"] = w
    if "precision" in st:
        _precision_from(st["precision"], kw, d)
    if "schedule" in st:
        c = _call(st["schedule"], tuple(SCHEDULES), "schedule", d)
        if c is not None:
            for k, _ in c.kwargs:
                if k not in SCHEDULES[c.name]:
                    d.add("E203", f"schedule {c.name} has no argument `{k}`", st["schedule"].span,
                          f"arguments: {', '.join(SCHEDULES[c.name]) or 'none'}")
            kw["schedule"] = c
    return replace(cfg, **kw)


def augment_from(v: S.Value, d: Diags) -> tuple | None:
    """``[crop(pad = 4), flip]`` as ``(("crop", (("pad", 4),)), ("flip", ()))``, checked
    against the registry of :mod:`fgc.training.augment`; None after a diagnostic."""
    from fgc.training import augment
    items = v.items if isinstance(v, S.List) else (v,)
    calls, spans = [], []
    for it in items:
        if isinstance(it, S.Name):
            calls.append((it.id, ()))
        elif isinstance(it, S.Call) and not it.args:
            kws = []
            for k in it.kwargs:
                if any(k.name == n for n, _ in kws):
                    d.add("E205", f"argument `{k.name}` of `{it.func}` given twice", k.span)
                    return None
                if not isinstance(k.value, (S.Number, S.Bool, S.String)):
                    d.add("E206", f"argument `{k.name}` of `{it.func}` must be a number, bool "
                          "or string", k.span)
                    return None
                kws.append((k.name, k.value.value))
            calls.append((it.func, tuple(kws)))
        elif isinstance(it, S.Call):
            d.add("E205", "augmentation arguments are given by name", it.span,
                  f"e.g. {it.func}(pad = 4)")
            return None
        else:
            d.add("E206", "augment is a list of augmentations, e.g. [crop(pad = 4), flip]",
                  getattr(it, "span", None))
            return None
        spans.append(it.span)
    before = len(d.items)
    augment.check(calls, spans.__getitem__, d)
    return None if len(d.items) > before else tuple(calls)


def _views_from(st: dict, kw: dict, d: Diags) -> None:
    """``views = 1 | 2`` and ``augment = byol(min_area = ..., strength = ..., blur = ...)``."""
    if "views" in st:
        n = _num(st["views"])
        if n not in (1, 2) or isinstance(n, float):
            d.add("E206", "views must be 1 or 2", st["views"].span,
                  "2 gives each example two augmented views (a contrastive loss needs them)")
        else:
            kw["views"] = n
    if "augment" in st and _is_view_policy(st["augment"]):
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
        kw["view_augment"] = c


def _precision_from(v: S.Value, kw: dict, d: Diags) -> None:
    """``precision = default | float32 | bfloat16``: how the train step's matmuls and
    convolutions are computed (the names and what they do: fgc.lowering.modules)."""
    from fgc.lowering.modules import PRECISIONS  # where they are implemented
    w = _word(v)
    if w in PRECISIONS:
        kw["precision"] = w
        return
    d.add("E207", f"precision must be one of {', '.join(PRECISIONS)}", getattr(v, "span", None),
          suggest(str(w), PRECISIONS) or "bfloat16: matmuls and convolutions on bfloat16 "
          "operands with float32 sums; float32: full float32 products on every device; "
          "default: the device's own (TF32 on recent NVIDIA GPUs)")


def _is_view_policy(v: S.Value) -> bool:
    """``augment = byol(...)``: a policy that makes each example's views (contrastive
    losses), not a list of per-image augmentations (``[crop(pad = 4), flip]``)."""
    return isinstance(v, S.Call) and v.func in AUGMENT_ARGS


def _known_dataset(name: str) -> bool:
    """What ``fgc.training.data.load_dataset`` accepts by name: a built-in, or an ``.npz`` path."""
    from fgc.training.data import BUILTIN_DATASETS  # numpy and PIL: only when a spec names a dataset
    return name.lower() in BUILTIN_DATASETS or name.lower().endswith(".npz")
