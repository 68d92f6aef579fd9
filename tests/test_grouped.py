"""group_linear's grouped product (fgc.lowering.grouped): a custom_jvp whose primal and
input tangent are a grouped convolution and whose weight tangent is a batched dot. Every
derivative the learning rules take of it (jvp in either argument or both, reverse mode,
second order, vmapped draws) against the plain einsum, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fgc.lowering.grouped import grouped_product


def _einsum(x, w):
    return jnp.einsum("...gi,gio->...go", x, w)


def _draw(lead, g=4, g_in=3, g_out=5, seed=0, dtype=jnp.float64):
    kx, kw, kdx, kdw = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, lead + (g, g_in), dtype)
    w = jax.random.normal(kw, (g, g_in, g_out), dtype)
    dx = jax.random.normal(kdx, x.shape, dtype)
    dw = jax.random.normal(kdw, w.shape, dtype)
    return x, w, dx, dw


@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
@pytest.mark.parametrize("groups", [1, 4])
def test_value_and_every_jvp_equal_the_einsum(lead, groups):
    with jax.enable_x64(True):
        x, w, dx, dw = _draw(lead, g=groups)
        np.testing.assert_allclose(grouped_product(x, w), _einsum(x, w), rtol=1e-13)
        for tangents in ((dx, dw), (dx, jnp.zeros_like(w)), (jnp.zeros_like(x), dw)):
            got = jax.jvp(grouped_product, (x, w), tangents)
            want = jax.jvp(_einsum, (x, w), tangents)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
        # one argument perturbed, the other closed over (its tangent a symbolic zero)
        got = jax.jvp(lambda w: grouped_product(x, w), (w,), (dw,))[1]
        np.testing.assert_allclose(got, jax.jvp(lambda w: _einsum(x, w), (w,), (dw,))[1],
                                   rtol=1e-12, atol=1e-13)
        got = jax.jvp(lambda x: grouped_product(x, w), (x,), (dx,))[1]
        np.testing.assert_allclose(got, jax.jvp(lambda x: _einsum(x, w), (x,), (dx,))[1],
                                   rtol=1e-12, atol=1e-13)


def test_derivatives_to_second_order_in_both_modes():
    with jax.enable_x64(True):
        x, w, _, _ = _draw((2, 3))
        check_grads(lambda x, w: jnp.tanh(grouped_product(x, w)), (x, w), order=2,
                    modes=("fwd", "rev"), eps=1e-4)


def test_vmapped_weight_gradients_equal_the_einsums():
    """What verify's draws and per-example projections do: a weight gradient per draw."""
    with jax.enable_x64(True):
        x, w, _, _ = _draw((6,))
        cots = jax.random.normal(jax.random.key(9), (7, 6, 4, 5), jnp.float64)

        def grads(f):
            return jax.vmap(lambda c: jax.grad(lambda w, x: (f(x, w) * c).sum(),
                                               argnums=(0, 1))(w, x))(cots)

        for a, b in zip(grads(grouped_product), grads(_einsum)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
        # a jvp per draw with batched input tangents (activity perturbation's draws)
        dxs = jax.random.normal(jax.random.key(8), (7,) + x.shape, jnp.float64)
        got = jax.vmap(lambda d: jax.jvp(lambda x: grouped_product(x, w), (x,), (d,))[1])(dxs)
        want = jax.vmap(lambda d: jax.jvp(lambda x: _einsum(x, w), (x,), (d,))[1])(dxs)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_precision_options_reach_the_product():
    x, w, _, _ = _draw((3,), dtype=jnp.float32)
    y = grouped_product(x, w, precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(y, _einsum(x, w), rtol=1e-5, atol=1e-5)
    assert y.dtype == jnp.float32
