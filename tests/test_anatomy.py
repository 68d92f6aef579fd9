"""`fgc bench --profile`'s split of a step by kind of operation: every executed HLO
instruction gets a kind, matrix products their FLOPs counted by hand, and the device's
ceilings are measured."""

import jax
import jax.numpy as jnp
import pytest

from fgc.tools.bench.anatomy import by_kind, classify
from fgc.tools.bench.ceilings import measure_ceilings


def _ops(fn, *args):
    return classify(jax.jit(fn).lower(*args).compile().as_text())


def test_a_dot_is_a_matmul_with_its_flops():
    a, b = jnp.ones((32, 16)), jnp.ones((16, 24))
    ops = _ops(lambda a, b: jnp.tanh(a @ b), a, b)
    products = [o for o in ops.values() if o.kind == "matmul"]
    assert len(products) == 1 and products[0].flops == 2 * 32 * 16 * 24
    # operands + result, float32
    assert products[0].bytes >= 4 * (32 * 16 + 16 * 24 + 32 * 24)
    assert {o.kind for o in ops.values()} <= {"matmul", "elementwise"}


def test_a_batched_dot_counts_its_batch():
    a, b = jnp.ones((5, 8, 6)), jnp.ones((5, 6, 7))
    ops = _ops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b)
    assert sum(o.flops for o in ops.values() if o.kind == "matmul") == 2 * 5 * 8 * 6 * 7


def test_a_convolution_counts_kernel_products_per_output():
    x, k = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3))
    ops = _ops(lambda x, k: jax.lax.conv(x, k, (1, 1), "SAME"), x, k)
    convs = [o for o in ops.values() if o.kind == "matmul"]
    assert sum(o.flops for o in convs) == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)


def test_grouped_convolution():
    x, k = jnp.ones((1, 4, 6, 6)), jnp.ones((4, 2, 3, 3))  # two groups of two channels
    ops = _ops(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "VALID", feature_group_count=2), x, k)
    assert sum(o.flops for o in ops.values() if o.kind == "matmul") == 2 * (4 * 4 * 4) * (2 * 9)


def test_a_grouped_linear_step_counts_each_product_once():
    """Forward, input gradient and filter gradient of fgc's group_linear (a grouped
    convolution, whose filter gradient XLA writes with a dilated input): three times the
    forward's products, as XLA's own cost analysis counts them."""
    from fgc.lowering.modules import make_layer
    layer = make_layer("group_linear", {"out": 64, "groups": 4, "bias": False}, [(64,)],
                       key=jax.random.key(0))
    x = jnp.ones((256, 64))
    ops = _ops(jax.grad(lambda l, x: (l(x) ** 2).sum(), argnums=(0, 1)), layer, x)
    assert sum(o.flops for o in ops.values() if o.kind == "matmul") == 3 * 2 * 256 * 64 * 16


def test_reductions_and_layout_copies():
    ops = _ops(lambda x: (jnp.swapaxes(x, 0, 1) * 2, x.sum(0)), jnp.ones((64, 96)))
    kinds = {o.kind for o in ops.values()}
    assert "reduce" in kinds
    assert kinds & {"layout", "elementwise"}  # the transposed product: a copy, or fused


def test_loop_bodies_are_read_and_the_loop_is_control():
    def f(w, x):
        return jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ w), x)
    ops = _ops(f, jnp.ones((16, 16)), jnp.ones((4, 16)))
    assert any(o.kind == "control" for o in ops.values())
    products = [o for o in ops.values() if o.kind == "matmul"]
    assert products and all(o.flops == 2 * 4 * 16 * 16 for o in products)


def test_by_kind_sums_per_step_and_leaves_control_out():
    from fgc.tools.bench.anatomy import Op
    ops = {"dot.1": Op("matmul", 2e9, 10**9), "fusion.2": Op("elementwise", 0.0, 4 * 10**9),
           "while.3": Op("control", 0.0, 0)}
    rows = by_kind({"dot.1": (2e6, 2), "fusion.2": (4e6, 4), "while.3": (9e6, 2),
                    "ThunkExecutor": (1e3, 2)}, ops, steps=2)
    assert list(rows) == ["matmul", "elementwise", "other"]
    assert rows["matmul"]["ms"] == 1000 and rows["matmul"]["gflop"] == 2.0
    assert rows["matmul"]["gflop_per_s"] == pytest.approx(2.0)
    assert rows["elementwise"]["gbyte"] == 8.0 and rows["elementwise"]["gbyte_per_s"] == 4.0
    assert rows["other"]["gflop_per_s"] is None


def test_ceilings_are_measured():
    c = measure_ceilings(matmul_n=256, stream_size=2**20)
    for k in ("matmul_fp32", "matmul_default", "matmul_bf16", "stream"):
        assert c[k] > 0
    assert c["matmul_n"] == 256 and c["stream_bytes"] == 8 * 2**20
