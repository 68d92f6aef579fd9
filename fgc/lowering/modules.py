"""How each op runs: one small Equinox module per op kind, registered by kind
(the layers with parameters, and model state, here; parameterless ones in
:mod:`fgc.lowering.simple`).

:mod:`fgc.graph.ops` says *what* an op is (arguments, shapes, parameters, locality);
this module says *how* it runs. :func:`make_layer` dispatches on the op kind
through the registry that :func:`register` fills, and names any kind nobody
registered, so adding an op to the table without a lowering fails loudly.

Every layer works on a batch: ``x`` has a leading batch axis in front of the
per-example shape of :mod:`fgc.graph.ops` (images ``[B, H, W, C]``, patches
``[B, P, D]``, vectors ``[B, D]``). Parameters have exactly the names and
shapes of the op's ``params`` rule (``weight``, ``bias``, ``scale``, ``shift``).

Initialisation follows Ren et al. (2023) as released: weights
``N(0, 1) * min(2 / sqrt(fan_in), 0.1)`` with ``fan_in`` the number of inputs
feeding one output unit (``in`` for dense, ``in / G`` for group-linear, ``P``
for token mixing, ``k * k * C_in`` for a convolution), biases zero, and
``init = zeros`` zero weights (the readout). Norm scales start at one, shifts
at zero.

Example:
    >>> import jax, jax.numpy as jnp
    >>> layer = make_layer("dense", {"out": 4, "bias": True, "init": "default"},
    ...                    [(3,)], key=jax.random.key(0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from fgc.errors import LoweringError
from fgc.lowering.grouped import grouped_product

Shape = tuple[int, ...]

__all__ = [
    "AbstractLayer", "BatchNorm", "BatchStats", "Buffer", "Conv", "Dense", "Feedback", "FrozenLayers",
    "GroupLinear", "GroupNorm", "LAYERS", "LayerNorm", "PRECISIONS", "StatefulLayer", "TokenMix",
    "init_std", "is_buffer", "make_layer", "register", "trainable", "with_precision",
]

LAYERS: dict[str, type["AbstractLayer"]] = {}
"""Op kind → the layer class that runs it (filled by :func:`register`)."""


def register(*kinds: str) -> Callable[[type], type]:
    """Class decorator: the layer runs ops of these kinds.

    Example:
        >>> @register("my_op")  # doctest: +SKIP
        ... class MyOp(AbstractLayer): ...
    """

    def deco(cls: type) -> type:
        for kind in kinds:
            if kind in LAYERS:
                raise ValueError(f"op `{kind}` is already lowered by {LAYERS[kind].__name__}")
            LAYERS[kind] = cls
        return cls

    return deco


def make_layer(kind: str, attrs: dict, in_shapes: list[Shape], *, key: PRNGKeyArray,
               dtype=jnp.float32) -> "AbstractLayer":
    """Builds the layer for one op.

    Args:
      kind: the op name (``dense``, ``layernorm`` ...).
      attrs: the op's evaluated arguments (``NodeData.attrs``).
      in_shapes: per-example shapes of its operands, in port order.
      key: PRNG key for the weights.
      dtype: parameter dtype.

    Returns:
      A module mapping batched operands to the batched output.

    Raises:
      LoweringError: no layer is registered for ``kind``.
    """
    from fgc.lowering import simple  # noqa: F401  (registers the parameterless layers)
    cls = LAYERS.get(kind)
    if cls is None:
        raise LoweringError(
            f"no lowering is registered for op `{kind}`; add a layer class to fgc/lowering/modules.py "
            f"decorated with @register({kind!r}) (registered: {', '.join(sorted(LAYERS))})")
    return cls.build(kind, attrs, list(in_shapes), key=key, dtype=dtype)


def init_std(fan_in: int) -> float:
    """Weight scale of Ren et al.: ``min(2 / sqrt(fan_in), 0.1)``."""
    return min(2.0 / math.sqrt(fan_in), 0.1)


def _weight(key, shape: Shape, fan_in: int, init: str, dtype) -> Array:
    if init == "zeros":
        return jnp.zeros(shape, dtype)
    if init != "default":
        raise ValueError(f"unknown init `{init}` (known: default, zeros)")
    return jax.random.normal(key, shape, dtype) * init_std(fan_in)


def _bias(attrs: dict, shape: Shape, dtype) -> Array | None:
    return jnp.zeros(shape, dtype) if attrs.get("bias", True) else None


def _lead(v: Array, like: Array) -> Array:
    """``v`` with leading unit axes up to ``like``'s rank: explicit broadcasting, so
    code stays correct under ``jax_numpy_rank_promotion = "raise"``."""
    return v.reshape((1,) * (like.ndim - v.ndim) + v.shape)


# --- matmul precision ----------------------------------------------------------------------
#
# How the layers with a matmul or convolution (dense, group_linear, token_mix, conv) compute
# it; the parameters stay in their own dtype (float32 masters) whatever the precision, and so
# do norms, losses and the optimizer state. `train.precision` in a spec picks one
# (fgc.front.config), `with_precision` sets it on a lowered network; `fgc verify` never does.
PRECISIONS = ("default", "float32", "bfloat16")
"""``default``: JAX's default for the device (full float32 on CPU, TF32 tensor cores on
NVIDIA Ampere and later, bfloat16 passes on TPU); ``float32``: full float32 products on every
device (``Precision.HIGHEST``); ``bfloat16``: operands and weights rounded to bfloat16,
products accumulated and returned in the parameters' dtype (on CPU, where XLA lacks some
bfloat16 dots, the same rounded operands multiplied in float32: the numbers, not the speed)."""


def _operands(precision: str, *arrays: Array) -> tuple[tuple[Array, ...], dict]:
    """The operands of a matmul or convolution under ``precision``, and the keyword
    arguments (``precision=``, ``preferred_element_type=``) that make it so."""
    if precision == "float32":
        return arrays, {"precision": jax.lax.Precision.HIGHEST}
    if precision == "bfloat16":
        out = jnp.result_type(*arrays)  # accumulate in the parameters' dtype, not bfloat16
        low = tuple(a.astype(jnp.bfloat16) for a in arrays)
        if jax.default_backend() == "cpu":
            # XLA:CPU runs no bf16 × bf16 → f32 dot for some shapes ("Unsupported element
            # type for DotThunk"): the same products from the bf16-rounded operands, taken
            # in f32 (exactly: two 8-bit significands multiply into f32's 24 bits).
            return tuple(a.astype(out) for a in low), {"precision": jax.lax.Precision.HIGHEST}
        return low, {"preferred_element_type": out}
    return arrays, {}


class AbstractLayer(eqx.Module):
    """One op, batched. Concrete layers are final; each builds itself from op attributes."""

    @classmethod
    @abc.abstractmethod
    def build(cls, kind: str, attrs: dict, in_shapes: list[Shape], *, key: PRNGKeyArray,
              dtype) -> "AbstractLayer":
        """Makes the layer for an op of ``kind`` with ``attrs`` on operands of ``in_shapes``."""

    @abc.abstractmethod
    def __call__(self, *xs: Array) -> Array:
        """Applies the op to batched operands."""


# --- model state ----------------------------------------------------------------------------

class Buffer(eqx.Module):
    """Marks non-trainable arrays a layer keeps (model state): never perturbed,
    decayed or updated by optax; the train step replaces them with what the
    forward pass computed. Filter trainable arrays with :func:`trainable`."""


class BatchStats(Buffer):
    """Running per-channel mean and variance of a batch norm."""

    mean: Float[Array, " channels"]
    var: Float[Array, " channels"]


class Feedback(Buffer):
    """A fixed random feedback matrix (feedback alignment and its direct variant): drawn
    once at lowering, saved with the checkpoint, never trained, decayed or perturbed."""

    matrix: Array


class FrozenLayers(Buffer):
    """Layers that never learn: the fixed random auxiliary heads of a ``project(guess =
    fixed)`` estimator ([F]), drawn once at initialisation, keyed by the head node they
    stand in for."""

    layers: dict[str, "AbstractLayer"]


def is_buffer(x) -> bool:
    return isinstance(x, Buffer)


def trainable(tree) -> "PyTree[bool]":
    """Filter spec: True for trainable arrays, False for arrays inside a :class:`Buffer`
    (for ``eqx.filter`` / ``eqx.partition``)."""
    return jax.tree_util.tree_map(lambda x: False if is_buffer(x) else eqx.is_array(x), tree,
                                  is_leaf=is_buffer)


class StatefulLayer(AbstractLayer):
    """A layer whose training forward also yields new buffers (``next_state``) and
    whose evaluation forward reads them (``train=False``)."""

    @abc.abstractmethod
    def __call__(self, *xs: Array, train: bool = True) -> Array:
        """Applies the op; ``train=False`` reads the buffers instead of the batch."""

    @abc.abstractmethod
    def next_state(self, *xs: Array) -> Buffer:
        """The buffers after a training step on ``xs`` (no gradient flows into them)."""


# --- linear layers -----------------------------------------------------------------------

@register("dense", "linear")
class Dense(AbstractLayer):
    """``x @ weight + bias`` on the last axis, shared over patches."""

    weight: Float[Array, "d_in d_out"]
    bias: Float[Array, " d_out"] | None
    precision: str = eqx.field(static=True, default="default")  # one of PRECISIONS

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        d_in = in_shapes[0][-1]
        shape = (d_in, attrs["out"])
        return cls(_weight(key, shape, d_in, attrs.get("init", "default"), dtype),
                   _bias(attrs, (attrs["out"],), dtype))

    def __check_init__(self):
        if self.weight.ndim != 2:
            raise ValueError(f"dense weight must be [in, out], got {self.weight.shape}")

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        (x, w), kw = _operands(self.precision, x, self.weight)
        y = jnp.matmul(x, w, **kw)
        return y if self.bias is None else y + _lead(self.bias, y)


@register("group_linear")
class GroupLinear(AbstractLayer):
    """``G`` independent linear maps, one per contiguous channel group."""

    weight: Float[Array, "groups g_in g_out"]
    bias: Float[Array, "groups g_out"] | None
    precision: str = eqx.field(static=True, default="default")  # one of PRECISIONS

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        g = attrs["groups"]
        shape = (g, in_shapes[0][-1] // g, attrs["out"] // g)
        return cls(_weight(key, shape, shape[1], attrs.get("init", "default"), dtype),
                   _bias(attrs, (g, shape[2]), dtype))

    def __check_init__(self):
        if self.weight.ndim != 3:
            raise ValueError(f"group_linear weight must be [G, in/G, out/G], got {self.weight.shape}")

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        g, g_in, g_out = self.weight.shape
        xg = x.reshape(*x.shape[:-1], g, g_in)
        (xg, w), kw = _operands(self.precision, xg, self.weight)
        y = grouped_product(xg, w, **kw)  # a grouped convolution, einsum for vmapped draws
        if self.bias is not None:
            y = y + _lead(self.bias, y)
        return y.reshape(*x.shape[:-1], g * g_out)


@register("token_mix")
class TokenMix(AbstractLayer):
    """Linear over the patch axis, shared by all channels:
    ``out[n, p, c] = sum_q x[n, q, c] weight[q, p] + bias[p]``."""

    weight: Float[Array, "patches patches"]
    bias: Float[Array, " patches"] | None
    precision: str = eqx.field(static=True, default="default")  # one of PRECISIONS

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        p = in_shapes[0][0]
        return cls(_weight(key, (p, p), p, attrs.get("init", "default"), dtype),
                   _bias(attrs, (p,), dtype))

    def __call__(self, x: Float[Array, "batch patches channels"]) -> Float[Array, "batch patches channels"]:
        (x, w), kw = _operands(self.precision, x, self.weight)
        # Contract over the last axis of the channels-major view, as the released code's
        # swapaxes does: the same sum, but XLA:CPU then keeps the patch-major activations'
        # gradients in place instead of transposing them (M/8/16 BP: 0.91x the step time,
        # 2% fewer bytes moved; BENCHMARKS §5.2).
        y = jnp.swapaxes(jnp.einsum("ncq,qp->ncp", jnp.swapaxes(x, 1, 2), w, **kw), 1, 2)
        return y if self.bias is None else y + _lead(self.bias[:, None], y)


@register("conv")
class Conv(AbstractLayer):
    """2-D convolution, NHWC activations and HWIO weights."""

    weight: Float[Array, "k k c_in c_out"]
    bias: Float[Array, " c_out"] | None
    stride: int = eqx.field(static=True)
    padding: str | int = eqx.field(static=True)
    precision: str = eqx.field(static=True, default="default")  # one of PRECISIONS

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        k, c_in = attrs["kernel"], in_shapes[0][-1]
        shape = (k, k, c_in, attrs["out"])
        return cls(_weight(key, shape, k * k * c_in, attrs.get("init", "default"), dtype),
                   _bias(attrs, (attrs["out"],), dtype), attrs["stride"], attrs["padding"])

    def __check_init__(self):
        if self.padding not in ("same", "valid") and not (
                isinstance(self.padding, int) and self.padding >= 0):
            raise ValueError(f"conv padding must be same, valid or a count ≥ 0, got {self.padding!r}")

    def __call__(self, x: Float[Array, "batch h w c_in"]) -> Float[Array, "batch oh ow c_out"]:
        dtype = jnp.result_type(x, self.weight)  # lax.conv does not promote
        p = self.padding
        pad = [(p, p), (p, p)] if isinstance(p, int) else p.upper()
        (x, w), kw = _operands(self.precision, x.astype(dtype), self.weight.astype(dtype))
        y = jax.lax.conv_general_dilated(
            x, w, (self.stride, self.stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            **kw)
        return y if self.bias is None else y + _lead(self.bias, y)


# --- normalisation -----------------------------------------------------------------------

def _standardize(x: Array, axes: tuple[int, ...], eps: float) -> Array:
    # Mean and mean of squares, var = E[x^2] - E[x]^2, as the released code does;
    # the clamp only guards rounding below zero.
    mean = jnp.mean(x, axis=axes, keepdims=True)
    msq = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
    var = jnp.maximum(msq - jnp.square(mean), 0.0)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _affine(attrs: dict, width: int, dtype) -> tuple[Array | None, Array | None]:
    if attrs.get("affine"):
        return jnp.ones((width,), dtype), jnp.zeros((width,), dtype)
    return None, None


class _AbstractNorm(AbstractLayer):
    """Shared fields of the normalisations; ``scale``/``shift`` only when affine."""

    scale: eqx.AbstractVar[Float[Array, " channels"] | None]
    shift: eqx.AbstractVar[Float[Array, " channels"] | None]

    def _apply_affine(self, y: Array) -> Array:
        if self.scale is not None:
            y = y * _lead(self.scale, y) + _lead(self.shift, y)
        return y


@register("layernorm")
class LayerNorm(_AbstractNorm):
    """Normalises each example's channels (per patch), within ``groups`` contiguous groups."""

    scale: Float[Array, " channels"] | None
    shift: Float[Array, " channels"] | None
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls(*_affine(attrs, in_shapes[0][-1], dtype), attrs.get("groups", 1),
                   float(attrs.get("eps", 1e-5)))

    def __call__(self, x: Float[Array, "*batch c"]) -> Float[Array, "*batch c"]:
        c = x.shape[-1]
        xg = x.reshape(*x.shape[:-1], self.groups, c // self.groups)
        y = _standardize(xg, (-1,), self.eps).reshape(x.shape)
        return self._apply_affine(y)


@register("groupnorm")
class GroupNorm(_AbstractNorm):
    """Normalises each example over all positions and the channels of each group."""

    scale: Float[Array, " channels"] | None
    shift: Float[Array, " channels"] | None
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls(*_affine(attrs, in_shapes[0][-1], dtype), attrs["groups"],
                   float(attrs.get("eps", 1e-5)))

    def __call__(self, x: Float[Array, "batch *pos c"]) -> Float[Array, "batch *pos c"]:
        c = x.shape[-1]
        xg = x.reshape(*x.shape[:-1], self.groups, c // self.groups)
        axes = tuple(range(1, x.ndim - 1)) + (-1,)  # positions and in-group channels
        return self._apply_affine(_standardize(xg, axes, self.eps).reshape(x.shape))


@register("batchnorm")
class BatchNorm(_AbstractNorm, StatefulLayer):
    """Normalises each channel over the batch and all positions.

    Training uses the batch's statistics (so under ``jax.jvp`` they carry their own
    tangent); evaluation uses running statistics, updated by every training step as
    ``(1 - momentum) · running + momentum · batch`` with the unbiased batch variance
    (PyTorch's convention, which the ResNet recipes assume).
    """

    scale: Float[Array, " channels"] | None
    shift: Float[Array, " channels"] | None
    stats: BatchStats
    eps: float = eqx.field(static=True)
    momentum: float = eqx.field(static=True)

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        c = in_shapes[0][-1]
        return cls(*_affine(attrs, c, dtype),
                   BatchStats(jnp.zeros((c,), dtype), jnp.ones((c,), dtype)),
                   float(attrs.get("eps", 1e-5)), float(attrs.get("momentum", 0.1)))

    def __call__(self, x: Float[Array, "batch *pos c"], train: bool = True
                 ) -> Float[Array, "batch *pos c"]:
        if train:
            return self._apply_affine(_standardize(x, tuple(range(x.ndim - 1)), self.eps))
        mean, var = (_lead(v, x) for v in jax.lax.stop_gradient((self.stats.mean, self.stats.var)))
        return self._apply_affine((x - mean) * jax.lax.rsqrt(var + self.eps))

    def next_state(self, x: Array) -> BatchStats:
        x = jax.lax.stop_gradient(x)
        axes = tuple(range(x.ndim - 1))
        n = math.prod(x.shape[:-1])
        mean = jnp.mean(x, axis=axes)
        var = jnp.var(x, axis=axes) * (n / max(n - 1, 1))
        m = self.momentum
        return BatchStats((1 - m) * self.stats.mean + m * mean, (1 - m) * self.stats.var + m * var)


# --- precision of a lowered network --------------------------------------------------------

_MATMUL_LAYERS = (Dense, GroupLinear, TokenMix, Conv)


def with_precision(tree: PyTree, precision: str) -> PyTree:
    """``tree`` (a network, a layer, a dict of layers) with every dense, group-linear,
    token-mixing and convolution layer computing at ``precision`` (:data:`PRECISIONS`);
    the arrays are the same ones, only how the products are taken changes.

    Example:
        >>> layer = make_layer("dense", {"out": 4}, [(3,)], key=jax.random.key(0))
        >>> with_precision(layer, "bfloat16")(jnp.ones((2, 3))).dtype
        dtype('float32')
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    def change(x):
        return dataclasses.replace(x, precision=precision) if isinstance(x, _MATMUL_LAYERS) else x

    return jax.tree_util.tree_map(change, tree, is_leaf=lambda x: isinstance(x, _MATMUL_LAYERS))
