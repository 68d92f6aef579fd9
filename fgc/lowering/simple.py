"""Layers without parameters: pooling, reshaping, activations, merges, perturbation
sites and gradient control (registered with :func:`fgc.lowering.modules.register`)."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from fgc.lowering.modules import AbstractLayer, register


# --- pooling and shape ----------------------------------------------------------------------

class _AbstractPool(AbstractLayer):
    size: eqx.AbstractVar[int]
    stride: eqx.AbstractVar[int]
    padding: eqx.AbstractVar[str]

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls(attrs["size"], attrs["stride"] or attrs["size"], attrs["padding"])

    def _window(self, x: Array, init, op) -> Array:
        return jax.lax.reduce_window(x, init, op, (1, self.size, self.size, 1),
                                     (1, self.stride, self.stride, 1), self.padding.upper())


@register("maxpool")
class MaxPool(_AbstractPool):
    """Max over ``size``×``size`` windows of an NHWC image."""

    size: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    padding: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "batch h w c"]) -> Float[Array, "batch oh ow c"]:
        return self._window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max)


@register("avgpool")
class AvgPool(_AbstractPool):
    """Mean over ``size``×``size`` windows; with ``same`` padding, of the in-image entries only."""

    size: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    padding: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "batch h w c"]) -> Float[Array, "batch oh ow c"]:
        zero = jnp.array(0, x.dtype)
        total = self._window(x, zero, jax.lax.add)
        if self.padding == "valid":
            return total / (self.size * self.size)
        count = self._window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), zero, jax.lax.add)
        return total / count


def adaptive_bins(n: int, size: int) -> Array:
    """``[size, n]`` averaging weights of PyTorch's adaptive pooling along one axis: bin i
    covers ``⌊i·n/size⌋ .. ⌈(i+1)·n/size⌉`` (so an axis shorter than ``size`` is spread)."""
    rows = []
    for i in range(size):
        lo, hi = (i * n) // size, -(-(i + 1) * n // size)
        rows.append([1.0 / (hi - lo) if lo <= j < hi else 0.0 for j in range(n)])
    return jnp.asarray(rows)


@register("adaptive_avgpool")
class AdaptiveAvgPool(AbstractLayer):
    """Mean over a ``size``×``size`` grid of bins: ``[B, H, W, C] → [B, size, size, C]``,
    as two small averaging matrices (one per axis), so any H and W work."""

    size: int = eqx.field(static=True)

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls(attrs["size"])

    def __call__(self, x: Float[Array, "batch h w c"]) -> Float[Array, "batch size size c"]:
        rows = adaptive_bins(x.shape[1], self.size).astype(x.dtype)
        cols = adaptive_bins(x.shape[2], self.size).astype(x.dtype)
        return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols)


@register("global_avgpool")
class GlobalAvgPool(AbstractLayer):
    """Mean over the positions of an image: ``[B, H, W, C] → [B, C]``."""

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls()

    def __call__(self, x: Float[Array, "batch h w c"]) -> Float[Array, "batch c"]:
        return jnp.mean(x, axis=(1, 2))


@register("mean")
class MeanPatches(AbstractLayer):
    """Mean over patches (or image positions): ``[B, P, D] → [B, D]``."""

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls()

    def __call__(self, x: Float[Array, "batch *pos d"]) -> Float[Array, "batch d"]:
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


@register("flatten")
class Flatten(AbstractLayer):
    """Everything but the batch axis into one axis (row-major)."""

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls()

    def __call__(self, x: Float[Array, "batch *rest"]) -> Float[Array, "batch d"]:
        return x.reshape(x.shape[0], -1)


@register("patchify")
class Patchify(AbstractLayer):
    """Cuts ``[B, H, W, C]`` into a ``per_side``×``per_side`` grid of patches,
    row-major, each flattened as (row, column, channel): ``[B, P, h·w·C]``."""

    per_side: int = eqx.field(static=True)

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls(attrs["per_side"])

    def __call__(self, x: Float[Array, "batch h w c"]) -> Float[Array, "batch patches d"]:
        b, h, w, c = x.shape
        n = self.per_side
        x = x.reshape(b, n, h // n, n, w // n, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, n * n, (h // n) * (w // n) * c)


# --- elementwise, merge, sites, gradient control ----------------------------------------------

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf form, as torch's default
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


@register(*_ACTIVATIONS)
class Activation(AbstractLayer):
    """An elementwise nonlinearity, chosen by op kind."""

    kind: str = eqx.field(static=True)

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls(kind)

    def __check_init__(self):
        if self.kind not in _ACTIVATIONS:
            raise ValueError(f"unknown activation `{self.kind}`")

    def __call__(self, x: Array) -> Array:
        return _ACTIVATIONS[self.kind](x)


@register("add")
class Add(AbstractLayer):
    """Residual add of two operands of the same shape."""

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls()

    def __call__(self, x: Array, y: Array) -> Array:
        return x + y


@register("perturb")
class Perturb(AbstractLayer):
    """A perturbation site: ``x + noise`` when noise is given, else ``x``.

    Differentiating with respect to ``noise`` at zero is how activity-perturbation
    tangents enter the network.
    """

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls()

    def __call__(self, x: Array, noise: Array | None = None) -> Array:
        if noise is None:
            return x
        if noise.shape != x.shape:
            raise ValueError(f"noise of shape {noise.shape} cannot perturb an activation of "
                             f"shape {x.shape}")
        return x + noise


@register("stopgrad")
class StopGrad(AbstractLayer):
    """Identity whose output carries no gradient and no forward-mode tangent."""

    @classmethod
    def build(cls, kind, attrs, in_shapes, *, key, dtype):
        return cls()

    def __call__(self, x: Array) -> Array:
        return jax.lax.stop_gradient(x)
