"""The contrastive loss kind: InfoNCE maths, its fused replicated rule, the registry,
the credit of a loss that couples examples, and a contrastive spec end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fgc.lowering.contrastive import infonce, naive_replicated, replicated_infonce


def _inputs(n=6, p=4, c=8, d=5, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(k[0], (n, p, c), jnp.float64)
    w = jax.random.normal(k[1], (c, d), jnp.float64)
    b = jax.random.normal(k[2], (d,), jnp.float64)
    return h, w, b


def _simclr_by_hand(z, tau):
    """SimCLR's NT-Xent written from its definition with numpy: 2B rows, positives
    i <-> i + B, every other row a negative."""
    z = np.asarray(z)
    q = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(q)
    out = []
    for i in range(n):
        sims = np.array([q[i] @ q[j] / tau for j in range(n)])
        pos = sims[(i + n // 2) % n]
        den = np.sum(np.exp(np.delete(sims, i)))
        out.append(-np.log(np.exp(pos) / den))
    return np.array(out)


def test_infonce_values_match_the_definition():
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(1), (8, 5), jnp.float64)
        for tau in (0.5, 0.1):
            np.testing.assert_allclose(infonce(z, tau), _simclr_by_hand(z, tau), rtol=1e-12)
            np.testing.assert_allclose(infonce(z, tau, stop_keys=False),
                                       _simclr_by_hand(z, tau), rtol=1e-12)


def test_infonce_needs_two_views():
    with pytest.raises(ValueError, match="two views"):
        infonce(jnp.ones((3, 4)))


def test_stop_keys_means_each_row_differentiates_through_its_own_query():
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(2), (6, 4), jnp.float64)
        jac = jax.jacrev(lambda z: infonce(z, 0.5, True))(z)        # [N, N, D]
        off = jac * (1 - jnp.eye(6))[:, :, None]
        assert float(jnp.abs(off).max()) == 0.0
        full = jax.jacrev(lambda z: infonce(z, 0.5, False))(z)
        assert float(jnp.abs(full * (1 - jnp.eye(6))[:, :, None]).max()) > 1e-3


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fused_matches_naive_values_jvp_vjp(groups):
    with jax.enable_x64(True):
        h, w, b = _inputs()
        fused = jax.jit(lambda h, w, b: replicated_infonce(h, w, b, groups, 0.3))
        naive = jax.jit(lambda h, w, b: naive_replicated(lambda z: infonce(z, 0.3, True), h, w,
                                                         b, groups))
        np.testing.assert_allclose(fused(h, w, b), naive(h, w, b), rtol=1e-13)
        t = _inputs(seed=7)
        _, jf = jax.jit(lambda p, t: jax.jvp(fused, p, t))((h, w, b), t)
        _, jn = jax.jit(lambda p, t: jax.jvp(naive, p, t))((h, w, b), t)
        np.testing.assert_allclose(jf, jn, rtol=1e-10, atol=1e-12)
        ct = jax.random.normal(jax.random.key(3), fused(h, w, b).shape, jnp.float64)
        vf = jax.jit(lambda p, ct: jax.vjp(fused, *p)[1](ct))((h, w, b), ct)
        vn = jax.jit(lambda p, ct: jax.vjp(naive, *p)[1](ct))((h, w, b), ct)
        for a, r in zip(vf, vn):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)


# check_grads compares with finite differences of the primal, which the stopped keys
# (and the replicas' masks) deliberately do not follow; it applies to the loss without
# stopped keys, and to the fused rule's forward and reverse modes agreeing with each
# other through the naive construction above.
def test_check_grads_without_stopped_keys():
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(4), (6, 3), jnp.float64)
        check_grads(jax.jit(lambda z: infonce(z, 0.5, False)), (z,), order=1, modes=("fwd", "rev"))
        h, w, b = _inputs(n=4, p=1, c=4)  # P = G = 1: one replica, the plain loss
        check_grads(jax.jit(lambda h, w, b: naive_replicated(
            lambda z: infonce(z, 0.5, False), h, w, b, 1)), (h, w, b), order=1, modes=("fwd", "rev"))


def test_replica_derivative_stays_in_its_own_patch_group_and_row():
    with jax.enable_x64(True):
        h, w, b = _inputs(n=4, p=2, c=4)
        jac = jax.jit(jax.jacrev(lambda h: replicated_infonce(h, w, b, 2, 0.5)))(h)  # [N,P,G,N,P,C]
        jac = np.asarray(jac).reshape(4, 2, 2, 4, 2, 2, 2)
        for i in range(4):
            for p in range(2):
                for g in range(2):
                    mask = np.zeros((4, 2, 2, 2))
                    mask[i, p, g] = 1
                    assert np.abs(jac[i, p, g] * (1 - mask)).max() == 0.0
                    assert np.abs(jac[i, p, g] * mask).max() > 0
