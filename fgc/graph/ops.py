"""The operations a spec can use: their arguments, shapes, parameters and locality.

This table is the single source of truth about an op for the checker, the
parameter counter, the graph drawer and the estimators. How an op *runs* is
registered separately in :mod:`fgc.lowering.modules` (what vs how).

Shapes are per example (no batch axis): an image is ``(H, W, C)``, a grid of
patches ``(P, D)``, a vector ``(D,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

Shape = tuple[int, ...]

REQUIRED = object()


class ShapeError(Exception):
    """Raised by an op's shape rule; the checker turns it into a diagnostic."""

    def __init__(self, message: str, hint: str | None = None, code: str = "E301"):
        super().__init__(message)
        self.hint = hint
        self.code = code


@dataclass(frozen=True)
class Arg:
    name: str
    default: Any = REQUIRED
    kind: type | tuple = int  # python type(s) the evaluated value must have
    choices: tuple = ()


@dataclass(frozen=True)
class OpDef:
    """Static facts about one op kind.

    Attributes:
      mixes: the axes along which an output unit depends on other input units:
        ``examples`` (batch statistics), ``positions`` (patches or pixels),
        ``channels`` (all of them; see ``channel_groups`` for ops that mix only
        within groups). Every op states it; ``None`` means unknown, and the
        credit map then treats the op as mixing every axis (over-crediting costs
        variance, under-crediting is a bias).
      channel_groups: attribute naming the op's channel-group count, if the op
        keeps channel groups apart (group_linear, grouped layernorm).
      role: ``linear`` (has weights), ``norm``, ``act``, ``pool``, ``site``
        (perturbation site), ``grad`` (gradient control), ``shape``, ``merge``.
    """

    name: str
    args: tuple[Arg, ...]
    infer: Callable[[list[Shape], dict], Shape]
    params: Callable[[Shape, dict], dict[str, Shape]] = lambda s, a: {}
    arity: int = 1
    role: str = "act"
    mixes: tuple[str, ...] | None = None
    channel_groups: str | None = None
    doc: str = ""

    def __post_init__(self):
        unknown = set(self.mixes or ()) - set(MIX_AXES)
        if unknown:
            raise ValueError(f"op `{self.name}`: unknown mixing axes {sorted(unknown)} "
                             f"(axes: {', '.join(MIX_AXES)})")

    def _mixes(self, axis: str) -> bool:
        return self.mixes is None or axis in self.mixes

    @property
    def mixes_channels(self) -> bool:
        return self._mixes("channels")

    @property
    def mixes_patches(self) -> bool:
        return self._mixes("positions")

    @property
    def mixes_examples(self) -> bool:
        return self._mixes("examples")


MIX_AXES = ("examples", "positions", "channels")

OPS: dict[str, OpDef] = {}


def op(name: str, *args: Arg, **kw) -> Callable:
    def register(infer):
        OPS[name] = OpDef(name, tuple(args), infer, **kw)
        return infer
    return register


def _need_rank(s: Shape, ranks: tuple[int, ...], what: str) -> None:
    if len(s) not in ranks:
        names = {1: "a vector (D,)", 2: "patches (P, D)", 3: "an image (H, W, C)"}
        want = " or ".join(names[r] for r in ranks)
        raise ShapeError(f"{what} needs {want}, got shape {list(s)}")


def _positive(a: dict, *names: str) -> None:
    for name in names:
        if a[name] <= 0:
            raise ShapeError(f"{name} must be positive, got {a[name]}", code="E303")


def _divides(n: int, g: int, what: str, of: str) -> None:
    if g <= 0 or n % g:
        # (no example divisor for absurd widths: the search would take forever)
        ok = [d for d in range(1, n + 1) if n % d == 0] if n <= 1_000_000 else []
        near = min(ok, key=lambda d: abs(d - g)) if ok else None
        raise ShapeError(f"{what} {g} does not divide {of} {n}",
                         f"use a divisor of {n}" + (f", e.g. {near}" if ok else ""), code="E302")


# --- shape ops ----------------------------------------------------------------

@op("patchify", Arg("per_side"), role="shape", mixes=("positions", "channels"),
    doc="Cuts an image into per_side×per_side patches, each flattened: (H,W,C) → (P, h·w·C).")
def _patchify(ins, a):
    (s,) = ins
    _need_rank(s, (3,), "patchify")
    _positive(a, "per_side")
    h, w, c = s
    n = a["per_side"]
    _divides(h, n, "patches per side", "image height")
    _divides(w, n, "patches per side", "image width")
    return (n * n, (h // n) * (w // n) * c)


@op("flatten", role="shape", mixes=("positions", "channels"),
    doc="Flattens everything but the batch axis.")
def _flatten(ins, a):
    return (math.prod(ins[0]),)


@op("mean", Arg("axis", "patches", str, ("patches",)), role="pool", mixes=("positions",),
    doc="Averages over patches: (P, D) → (D,).")
def _mean(ins, a):
    (s,) = ins
    _need_rank(s, (2, 3), "mean(patches)")
    return (s[-1],)


# --- linear ops -----------------------------------------------------------------

def _dense_params(s, a):
    p = {"weight": (s[-1], a["out"])}
    if a["bias"]:
        p["bias"] = (a["out"],)
    return p


_INITS = ("default", "zeros")

for _name, _doc in (("dense", "Linear layer on the channel axis, shared over patches."),
                    ("linear", "Same as dense; reads better in heads.")):
    @op(_name, Arg("out"), Arg("bias", True, bool), Arg("init", "default", str, _INITS),
        params=_dense_params, role="linear", mixes=("channels",), doc=_doc)
    def _dense(ins, a):
        (s,) = ins
        _need_rank(s, (1, 2), "dense")
        if a["out"] <= 0:
            raise ShapeError(f"output width must be positive, got {a['out']}", code="E303")
        return s[:-1] + (a["out"],)


def _group_linear_params(s, a):
    g = a["groups"]
    p = {"weight": (g, s[-1] // g, a["out"] // g)}
    if a["bias"]:
        p["bias"] = (g, a["out"] // g)
    return p


@op("group_linear", Arg("out"), Arg("groups"), Arg("bias", True, bool),
    Arg("init", "default", str, _INITS), params=_group_linear_params, role="linear",
    mixes=(), channel_groups="groups",
    doc="G independent linear maps, one per channel group: weight [G, in/G, out/G].")
def _group_linear(ins, a):
    (s,) = ins
    _need_rank(s, (1, 2), "group_linear")
    _positive(a, "out")
    _divides(s[-1], a["groups"], "group count", "input width")
    _divides(a["out"], a["groups"], "group count", "output width")
    return s[:-1] + (a["out"],)


def _token_mix_params(s, a):
    p = {"weight": (s[0], s[0])}
    if a["bias"]:
        p["bias"] = (s[0],)
    return p


@op("token_mix", Arg("bias", True, bool), Arg("init", "default", str, _INITS),
    params=_token_mix_params, role="linear", mixes=("positions",),
    doc="Linear map over patches (P→P), shared by all channels.")
def _token_mix(ins, a):
    (s,) = ins
    _need_rank(s, (2,), "token_mix")
    return s


def _conv_params(s, a):
    k = a["kernel"]
    p = {"weight": (k, k, s[-1], a["out"])}
    if a["bias"]:
        p["bias"] = (a["out"],)
    return p


def _spatial_out(n: int, k: int, stride: int, padding: str | int) -> int:
    if isinstance(padding, int):  # explicit zeros on both sides, as PyTorch's `padding = p`
        return (n + 2 * padding - k) // stride + 1
    return -(-n // stride) if padding == "same" else (n - k) // stride + 1


@op("conv", Arg("out"), Arg("kernel", 3), Arg("stride", 1), Arg("padding", "same", (str, int),
    ("same", "valid")), Arg("bias", True, bool), Arg("init", "default", str, _INITS),
    params=_conv_params, role="linear", mixes=("positions", "channels"),
    doc="2-D convolution over an image (H, W, C); `padding` is same, valid or a number p "
        "of zero rows and columns on every side (PyTorch's `padding = p`).")
def _conv(ins, a):
    (s,) = ins
    _need_rank(s, (3,), "conv")
    _positive(a, "out", "kernel", "stride")
    if isinstance(a["padding"], int) and a["padding"] < 0:
        raise ShapeError(f"padding must be ≥ 0, got {a['padding']}", code="E303")
    h, w, _ = s
    oh, ow = (_spatial_out(n, a["kernel"], a["stride"], a["padding"]) for n in (h, w))
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"kernel {a['kernel']} is larger than the {h}×{w} input")
    return (oh, ow, a["out"])


def _pool(ins, a):
    (s,) = ins
    _need_rank(s, (3,), "pooling")
    _positive(a, "size")
    if a["stride"] < 0:  # 0 means "same as size"
        raise ShapeError(f"stride must be positive, got {a['stride']}", code="E303")
    k, st = a["size"], a["stride"] or a["size"]
    h, w, c = s
    oh, ow = (_spatial_out(n, k, st, a["padding"]) for n in (h, w))
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"pool size {k} is larger than the {h}×{w} input")
    return (oh, ow, c)


for _name in ("maxpool", "avgpool"):
    op(_name, Arg("size", 2), Arg("stride", 0), Arg("padding", "valid", str, ("same", "valid")),
       role="pool", mixes=("positions",), doc=f"{_name[:3]} pooling over an image.")(_pool)


@op("adaptive_avgpool", Arg("size"), role="pool", mixes=("positions",),
    doc="Averages an image into a size×size grid of bins (PyTorch's AdaptiveAvgPool2d: bin i "
        "covers rows ⌊i·H/size⌋ to ⌈(i+1)·H/size⌉); a smaller input is spread over the bins.")
def _adaptive_pool(ins, a):
    (s,) = ins
    _need_rank(s, (3,), "adaptive_avgpool")
    _positive(a, "size")
    return (a["size"], a["size"], s[-1])


@op("global_avgpool", role="pool", mixes=("positions",),
    doc="Averages an image over its positions: (H, W, C) → (C,).")
def _gap(ins, a):
    _need_rank(ins[0], (3,), "global_avgpool")
    return (ins[0][-1],)


# --- normalisation ----------------------------------------------------------------

def _norm_params(s, a):
    return {"scale": (s[-1],), "shift": (s[-1],)} if a["affine"] else {}


@op("layernorm", Arg("groups", 1), Arg("affine", False, bool), Arg("eps", 1e-5, (int, float)),
    params=_norm_params, role="norm", mixes=(), channel_groups="groups",
    doc="LayerNorm over the channels (within each of `groups` groups); no affine by default.")
def _layernorm(ins, a):
    (s,) = ins
    _positive(a, "eps")  # eps ≤ 0 divides by zero (NaN) on a constant input
    _divides(s[-1], a["groups"], "group count", "width")
    return s


@op("groupnorm", Arg("groups"), Arg("affine", True, bool), Arg("eps", 1e-5, (int, float)),
    params=_norm_params, role="norm", mixes=("positions",), channel_groups="groups",
    doc="GroupNorm over positions and the channels of each group (for conv nets).")
def _groupnorm(ins, a):
    (s,) = ins
    _positive(a, "eps")
    _divides(s[-1], a["groups"], "group count", "width")
    return s


@op("batchnorm", Arg("affine", True, bool), Arg("eps", 1e-5, (int, float)),
    Arg("momentum", 0.1, (int, float)), params=_norm_params, role="norm",
    mixes=("examples", "positions"),
    doc="Normalises each channel over the batch and positions: batch statistics in "
        "training, running statistics (updated with `momentum`) in evaluation.")
def _batchnorm(ins, a):
    _positive(a, "eps")
    if not 0 < a["momentum"] <= 1:
        raise ShapeError(f"momentum must be in (0, 1], got {a['momentum']}",
                         "the running statistics move by `momentum` of the batch's each step; "
                         "0.1 is the usual value", code="E303")
    return ins[0]


# --- elementwise ----------------------------------------------------------------------

for _name in ("relu", "gelu", "tanh", "identity"):
    op(_name, role="act", mixes=(), doc=f"Elementwise {_name}.")(lambda ins, a: ins[0])


@op("add", arity=2, role="merge", mixes=(), doc="Residual add of another value of the same shape.")
def _add(ins, a):
    x, y = ins
    if x != y:
        raise ShapeError(f"cannot add shapes {list(x)} and {list(y)}",
                         "both sides of add(...) must have the same shape", code="E304")
    return x


@op("perturb", role="site", mixes=(),
    doc="A perturbation site: activity noise enters here (after the norm, before the activation).")
def _perturb(ins, a):
    return ins[0]


@op("stopgrad", role="grad", mixes=(), doc="Stops gradients (and forward-mode tangents) along this edge.")
def _stopgrad(ins, a):
    return ins[0]


def group_count(opdef: OpDef, attrs: dict) -> int | None:
    """The op's own channel-group count, or None if it keeps no groups apart."""
    return attrs.get(opdef.channel_groups) if opdef.channel_groups else None


REPLICATE_AXES = ("patches", "groups")
