"""The fused replicated loss must match the masked (naive) construction."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fgc.lowering.replicated import naive_replicated_xent, replicated_xent, xent

# (B, P, C, G, K): the general case, one group, one patch, one channel per group.
SHAPES = [
    (3, 4, 8, 2, 5),
    (3, 4, 8, 1, 5),
    (3, 1, 8, 2, 5),
    (3, 4, 8, 8, 5),
    (2, 1, 6, 6, 3),
]
IDS = ["B3P4C8G2", "G1", "P1", "G=C", "P1,G=C"]


@pytest.fixture(autouse=True)
def x64():
    # Float64 so comparisons are tight; the context manager restores the
    # global setting for other test modules.
    with jax.enable_x64(True):
        yield


def make(shape, seed=0):
    bsz, p, c, g, k = shape
    ks = jax.random.split(jax.random.key(seed), 8)
    h = jax.random.normal(ks[0], (bsz, p, c), jnp.float64)
    w = jax.random.normal(ks[1], (c, k), jnp.float64) / np.sqrt(c)
    b = jax.random.normal(ks[2], (k,), jnp.float64)
    labels = jax.random.randint(ks[3], (bsz,), 0, k)
    tangents = (
        jax.random.normal(ks[4], (bsz, p, c), jnp.float64),
        jax.random.normal(ks[5], (c, k), jnp.float64),
        jax.random.normal(ks[6], (k,), jnp.float64),
    )
    cot = jax.random.normal(ks[7], (bsz, p, g), jnp.float64)
    return (h, w, b), labels, g, tangents, cot


def closure(fn, labels, groups):
    return lambda h, w, b: fn(h, w, b, labels, groups)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_primal(shape):
    (h, w, b), labels, g, _, _ = make(shape)
    bsz, p = shape[:2]
    ce = xent(jnp.mean(h, axis=1) @ w + b[None], labels)
    fused = replicated_xent(h, w, b, labels, g)
    naive = naive_replicated_xent(h, w, b, labels, g)
    assert fused.shape == naive.shape == (bsz, p, g)
    np.testing.assert_allclose(fused, np.broadcast_to(ce[:, None, None], (bsz, p, g)), rtol=1e-12)
    np.testing.assert_allclose(naive, fused, rtol=1e-12)


def test_xent_matches_optax_and_is_stable():
    import optax

    logits = jnp.array([[1.0, 2.0, 3.0], [1000.0, -1000.0, 0.0]])
    labels = jnp.array([2, 1])
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    out = xent(logits, labels)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=1e-12)


# Which primal inputs carry a tangent: each alone, then all together.
WHICH = {"h": (1, 0, 0), "w": (0, 1, 0), "b": (0, 0, 1), "all": (1, 1, 1)}


@pytest.mark.parametrize("which", list(WHICH), ids=list(WHICH))
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_jvp_matches_naive(shape, which):
    primals, labels, g, tangents, _ = make(shape, seed=1)
    tangents = tuple(t * m for t, m in zip(tangents, WHICH[which]))
    out_f, dout_f = jax.jvp(closure(replicated_xent, labels, g), primals, tangents)
    out_n, dout_n = jax.jvp(closure(naive_replicated_xent, labels, g), primals, tangents)
    np.testing.assert_allclose(out_f, out_n, rtol=1e-12)
    np.testing.assert_allclose(dout_f, dout_n, rtol=1e-10, atol=1e-12)
    if which == "h":
        # The replicas really differ: the derivative is not a broadcast.
        assert shape[1] * shape[3] == 1 or np.ptp(np.asarray(dout_f), axis=(1, 2)).max() > 1e-6


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_vjp_matches_naive(shape):
    primals, labels, g, _, cot = make(shape, seed=2)
    _, vjp_f = jax.vjp(closure(replicated_xent, labels, g), *primals)
    _, vjp_n = jax.vjp(closure(naive_replicated_xent, labels, g), *primals)
    for name, gf, gn in zip("hwb", vjp_f(cot), vjp_n(cot)):
        assert gf.shape == gn.shape, name
        np.testing.assert_allclose(gf, gn, rtol=1e-10, atol=1e-12, err_msg=name)


# check_grads compares AD against finite differences of the *primal*. The
# replicated loss deliberately does not differentiate its primal (replica
# (n, p, g) ignores every block of h but its own), so it is checked where the
# two agree: the head parameters, the unreplicated case, and each replica
# against its own block of h.


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_check_grads_head_params(shape):
    (h, w, b), labels, g, _, _ = make(shape, seed=3)
    f = lambda w, b: replicated_xent(h, w, b, labels, g)
    check_grads(f, (w, b), order=1, modes=("fwd", "rev"))


def test_check_grads_unreplicated():
    # P = G = 1: one replica, which is the plain loss, so all of h counts.
    primals, labels, g, _, _ = make((3, 1, 8, 1, 5), seed=3)
    check_grads(closure(replicated_xent, labels, g), primals, order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_check_grads_per_replica_block(shape):
    # Replica (p, g) as a function of its own block h[:, p, group g] alone:
    # here the true derivative of the primal is what the fused rule claims.
    (h, w, b), labels, g, _, _ = make(shape, seed=3)
    p_count, c = shape[1], shape[2]
    cg = c // g
    for p in range(p_count):
        for gi in range(g):
            sl = slice(gi * cg, (gi + 1) * cg)

            def f(x, w, b, p=p, gi=gi, sl=sl):
                return replicated_xent(h.at[:, p, sl].set(x), w, b, labels, g)[:, p, gi]

            check_grads(f, (h[:, p, sl], w, b), order=1, modes=("fwd", "rev"))


def test_check_grads_on_all_of_h_disagrees_by_design():
    # The guard for the comment above: with P * G > 1 replicas the fused
    # derivative is not the derivative of the forward value.
    primals, labels, g, _, _ = make((3, 4, 8, 2, 5), seed=3)
    with pytest.raises(AssertionError):
        check_grads(closure(replicated_xent, labels, g), primals, order=1, modes=("fwd",))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_vjp_is_transpose_of_jvp(shape):
    # <cot, J t> == <J^T cot, t>: reverse mode is the transpose of the rule.
    primals, labels, g, tangents, cot = make(shape, seed=7)
    f = closure(replicated_xent, labels, g)
    _, jt = jax.jvp(f, primals, tangents)
    jtc = jax.vjp(f, *primals)[1](cot)
    lhs = jnp.vdot(cot, jt)
    rhs = sum(jnp.vdot(a, t) for a, t in zip(jtc, tangents))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_each_replica_gets_its_share_of_the_single_loss_gradient(shape):
    # Summed over replicas, the masks partition h, so the all-ones VJP equals
    # the gradient of the plain (non-replicated) batch loss.
    (h, w, b), labels, g, _, _ = make(shape, seed=4)
    out, vjp = jax.vjp(lambda h: replicated_xent(h, w, b, labels, g), h)
    (gh,) = vjp(jnp.ones_like(out))
    single = jax.grad(lambda h: jnp.sum(xent(jnp.mean(h, axis=1) @ w + b[None], labels)))(h)
    np.testing.assert_allclose(gh, single, rtol=1e-10, atol=1e-12)
    # The same through jax.grad of the summed replicated output.
    gsum = jax.grad(lambda h: jnp.sum(replicated_xent(h, w, b, labels, g)))(h)
    np.testing.assert_allclose(gsum, single, rtol=1e-10, atol=1e-12)


def test_grad_wrt_params_is_replica_count_times_single():
    # W and b are not masked: each of the P*G replicas carries their full gradient.
    shape = (3, 4, 8, 2, 5)
    (h, w, b), labels, g, _, _ = make(shape, seed=5)
    gw, gb = jax.grad(lambda w, b: jnp.sum(replicated_xent(h, w, b, labels, g)), (0, 1))(w, b)
    sw, sb = jax.grad(lambda w, b: jnp.sum(xent(jnp.mean(h, axis=1) @ w + b[None], labels)), (0, 1))(w, b)
    np.testing.assert_allclose(gw, 8 * sw, rtol=1e-10)
    np.testing.assert_allclose(gb, 8 * sb, rtol=1e-10)


def test_jit():
    shape = (3, 4, 8, 2, 5)
    primals, labels, g, tangents, cot = make(shape, seed=6)

    @jax.jit
    def fwd(h, w, b, labels, dh, dw, db):
        return jax.jvp(lambda h, w, b: replicated_xent(h, w, b, labels, g), (h, w, b), (dh, dw, db))

    @jax.jit
    def rev(h, w, b, labels, cot):
        return jax.vjp(lambda h, w, b: replicated_xent(h, w, b, labels, g), h, w, b)[1](cot)

    out, dout = fwd(*primals, labels, *tangents)
    ref_out, ref_dout = jax.jvp(closure(naive_replicated_xent, labels, g), primals, tangents)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12)
    np.testing.assert_allclose(dout, ref_dout, rtol=1e-10, atol=1e-12)
    grads = rev(*primals, labels, cot)
    ref = jax.vjp(closure(naive_replicated_xent, labels, g), *primals)[1](cot)
    for gf, gn in zip(grads, ref):
        np.testing.assert_allclose(gf, gn, rtol=1e-10, atol=1e-12)


def test_float32_runs():
    # Outside the x64 tests' usual dtype: the tangent keeps the primal dtype.
    shape = (3, 4, 8, 2, 5)
    (h, w, b), labels, g, (dh, dw, db), _ = make(shape)
    h, w, b, dh, dw, db = (x.astype(jnp.float32) for x in (h, w, b, dh, dw, db))
    out, dout = jax.jvp(closure(replicated_xent, labels, g), (h, w, b), (dh, dw, db))
    assert out.dtype == dout.dtype == jnp.float32
    _, ref = jax.jvp(closure(naive_replicated_xent, labels, g), (h, w, b), (dh, dw, db))
    np.testing.assert_allclose(dout, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "h_shape,groups,match",
    [((3, 8), 2, "patch axis"), ((3, 4, 8), 3, "groups"), ((3, 4, 8), 0, "groups")],
)
def test_bad_shapes(h_shape, groups, match):
    h = jnp.zeros(h_shape)
    w, b, labels = jnp.zeros((8, 5)), jnp.zeros(5), jnp.zeros(3, jnp.int32)
    with pytest.raises(ValueError, match=match):
        replicated_xent(h, w, b, labels, groups)


def test_labels_must_be_integers():
    with pytest.raises(ValueError, match="labels"):
        replicated_xent(jnp.zeros((3, 4, 8)), jnp.zeros((8, 5)), jnp.zeros(5), jnp.zeros(3), 2)


def _largest_array(fn, *args):
    """Elements in the largest array the compiled XLA program names."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    dims = re.findall(r"[fs](?:32|64)\[([\d,]+)\]", text)
    return max(int(np.prod([int(d) for d in s.split(",")])) for s in dims if s)


def test_fused_never_builds_bpgc():
    # The point of fusing: JVP and VJP stay O(B*P*C); the naive op needs
    # P*G copies of h, which this check must see.
    shape = (4, 8, 32, 8, 5)
    bsz, p, c, g, _ = shape
    primals, labels, g, tangents, cot = make(shape, seed=8)

    def jvp(fn):
        return lambda prim, tan: jax.jvp(closure(fn, labels, g), prim, tan)

    def vjp(fn):
        return lambda prim, ct: jax.vjp(closure(fn, labels, g), *prim)[1](ct)

    assert _largest_array(jvp(replicated_xent), primals, tangents) <= bsz * p * c
    assert _largest_array(vjp(replicated_xent), primals, cot) <= bsz * p * c
    assert _largest_array(jvp(naive_replicated_xent), primals, tangents) >= bsz * p * g * c
