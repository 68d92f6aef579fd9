"""The grouped product behind ``group_linear``: ``y[..., g, :] = x[..., g, :] @ w[g]``.

Two ways to compute it, each fast where the other is slow on XLA:CPU, so each
derivative takes the one that suits it:

- A batched ``dot_general`` over the groups puts the group axis first in its output
  (``[G, ..., out/G]``), and every consumer re-reads it transposed. In a train step
  that layout spreads through the fusions around it: at M/8/16 they ran at 37-55% of
  the memory's stream rate, and the same step with a grouped convolution took 0.54-0.66x
  the time (BENCHMARKS §5.3).
- A grouped 1-wide convolution (``feature_group_count = G``) keeps the channels in
  place, but its filter gradient under ``vmap`` (verify's and diagnose's draws,
  per-example weight gradients of the weight-space projections) becomes a convolution
  with ``G`` times the batch as groups, 7-19x slower than the batched dot
  (``docs/benchmarks/group-linear-conv/vmapped_grads.py``).

So :func:`grouped_product` is a ``custom_jvp``: the primal and the tangent in ``x``
are the convolution (its transpose, the input gradient, is a convolution too, and
vmaps over the batch), the tangent in ``w`` is the batched dot, whose transpose, the
weight gradient, stays a batched dot under ``vmap``. A tangent that is zero (the
weights under activity perturbation, the input of a first layer) is not computed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float

__all__ = ["grouped_product"]


def _by_convolution(x: Array, w: Array, options: tuple) -> Array:
    g, g_in, g_out = w.shape
    lead = x.shape[:-2]
    dtype = jnp.result_type(x, w)  # lax.conv does not promote
    # NWC with one position: the groups' channels side by side, as a grouped
    # convolution wants them; the kernel's outputs grouped the same way.
    kernel = jnp.transpose(w, (1, 0, 2)).reshape(1, g_in, g * g_out).astype(dtype)
    y = jax.lax.conv_general_dilated(
        x.reshape(-1, 1, g * g_in).astype(dtype), kernel, (1,), "VALID",
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=g, **dict(options))
    return y.reshape(*lead, g, g_out)


def _by_dot(x: Array, w: Array, options: tuple) -> Array:
    return jnp.einsum("...gi,gio->...go", x, w, **dict(options))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _product(x, w, options):
    return _by_convolution(x, w, options)


@functools.partial(_product.defjvp, symbolic_zeros=True)
def _product_jvp(options, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _by_convolution(x, w, options)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_by_convolution(dx, w, options))
    if not isinstance(dw, SymbolicZero):
        parts.append(_by_dot(x, dw, options))
    if not parts:
        return y, jnp.zeros_like(y)
    return y, parts[0] if len(parts) == 1 else parts[0] + parts[1]


def grouped_product(x: Float[Array, "*batch groups g_in"], w: Float[Array, "groups g_in g_out"],
                    **options) -> Float[Array, "*batch groups g_out"]:
    """``einsum("...gi,gio->...go", x, w)``, computed as the module docstring says.

    ``options`` are the product's ``precision`` / ``preferred_element_type`` (those of
    :func:`fgc.lowering.modules._operands`). One group is a plain matmul.
    """
    options = tuple(sorted(options.items()))
    if w.shape[0] == 1:
        return _by_dot(x, w, options)
    return _product(x, w, options)
