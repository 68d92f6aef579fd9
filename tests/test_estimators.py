"""Estimators: forward gradients are unbiased estimates of the gradient they target,
for weight and activity perturbation, against the global and the local losses; greedy
stop-gradients keep every block's estimate to its own loss."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgc
from fgc.learning.estimators import UpdateRule, objective
from fgc.lowering.lower import lower
from specs import local_mixer

# A LocalMixer small enough to average many thousand estimates: 4×4 images cut into
# 2×2 patches, 8 channels in 2 groups of 4, a stem and one mixer block.
SPEC = local_mixer("unbiasedness", image=4, classes=3, zero_readout=False)

EXACT = {"fg-w": "bp", "fg-a": "bp", "lg-fg-w": "lg-bp", "lg-fg-a": "lg-bp"}
N_ESTIMATES = 40_000  # compiling dominates: one estimate costs about 40 µs here


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def program():
    return fgc.loads(SPEC, "unbiasedness.fg")


def _batch(b=4):
    x = jax.random.uniform(jax.random.key(1), (b, 4, 4, 1), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (b,), 0, 3)
    return x, y


def _net(program, algorithm):
    return lower(program.plan(algorithm), jax.random.key(0), dtype=jnp.float64)


def _backbone(tree):
    """The backbone leaves of a gradient pytree, flattened into one vector."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return np.concatenate([np.ravel(v) for p, v in leaves if "loss:" not in jax.tree_util.keystr(p)])


def _true_gradient(program, algorithm, net, x, y):
    """jax.grad of Σ losses under the exact counterpart's stop-gradient structure."""
    ref = lower(program.plan(EXACT[algorithm]), jax.random.key(0), dtype=jnp.float64)
    ref = eqx.tree_at(lambda n: n.layers, ref, net.layers)  # same parameters
    params, static = eqx.partition(ref, eqx.is_array)
    return jax.grad(lambda p: objective(eqx.combine(p, static).forward(x, y).losses))(params)


# Weight perturbation's unbiasedness is also `fgc verify`'s (tests/test_verify.py, the oracle):
# its two long runs here are `slow`.
@pytest.mark.parametrize("algorithm", ["fg-a", "lg-fg-a", pytest.param("fg-w", marks=pytest.mark.slow),
                                       pytest.param("lg-fg-w", marks=pytest.mark.slow)])
def test_forward_gradient_is_unbiased(program, algorithm):
    net = _net(program, algorithm)
    x, y = _batch()
    rule = UpdateRule.build(program.plan(algorithm), net)
    true = _backbone(_true_gradient(program, algorithm, net, x, y))
    assert np.linalg.norm(true) > 0

    draw = jax.jit(jax.vmap(lambda k: _backbone_jnp(rule.estimate(net, x, y, k).grads)))
    n, chunk = N_ESTIMATES, 4000
    total = np.zeros_like(true)
    total_sq = np.zeros_like(true)
    for i in range(n // chunk):
        e = np.asarray(draw(jax.random.split(jax.random.key(100 + i), chunk)))
        total += e.sum(0)
        total_sq += (e ** 2).sum(0)
    mean = total / n
    cos = mean @ true / (np.linalg.norm(mean) * np.linalg.norm(true))
    assert cos >= 0.99, f"{algorithm}: cosine {cos:.4f} of the mean of {n} estimates"
    # No coordinate is off by more than sampling error: a bias would show here long
    # before it shows in the cosine.
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    z = np.abs(mean - true) / (std / np.sqrt(n) + 1e-9 * np.abs(true).max())
    assert z.max() < 6.0, f"{algorithm}: coordinate {z.argmax()} is {z.max():.1f} standard errors off"


def _backbone_jnp(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return jnp.concatenate([jnp.ravel(v) for p, v in leaves if "loss:" not in jax.tree_util.keystr(p)])


@pytest.mark.parametrize("algorithm", ["bp", "lg-bp", "l-bp"])
def test_backprop_estimator_is_jax_grad(program, algorithm):
    net = _net(program, algorithm)
    x, y = _batch()
    est = UpdateRule.build(program.plan(algorithm), net).estimate(net, x, y, jax.random.key(0))
    params, static = eqx.partition(net, eqx.is_array)
    grads = jax.grad(lambda p: objective(eqx.combine(p, static).forward(x, y).losses))(params)
    np.testing.assert_allclose(_backbone(est.grads), _backbone(grads), rtol=1e-10, atol=1e-12)


def test_heads_get_the_exact_gradient_of_their_single_loss(program):
    """Replicas share the head: its gradient is that of one (unreplicated) loss."""
    net = _net(program, "lg-fg-a")
    x, y = _batch()
    est = UpdateRule.build(program.plan("lg-fg-a"), net).estimate(net, x, y, jax.random.key(3))
    head = "loss:local@mixer.1/linear.2"
    layer = net.layers[head]
    h = net.values(x)["loss:local@mixer.1/layernorm.0"]

    def single(w, b):
        logits = h.mean(axis=1) @ w + b[None]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    gw, gb = jax.grad(single, argnums=(0, 1))(layer.weight, layer.bias)
    np.testing.assert_allclose(est.grads.layers[head].weight, gw, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.grads.layers[head].bias, gb, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["lg-fg-a", "lg-fg-w", "lg-bp"])
def test_greedy_estimates_ignore_later_blocks(program, algorithm):
    """Nothing crosses a greedy stop-gradient: changing the second block's head (its
    loss) leaves every estimate of the first block bit-for-bit unchanged."""
    net = _net(program, algorithm)
    x, y = _batch()
    rule = UpdateRule.build(program.plan(algorithm), net)
    head = "loss:local@mixer.1/linear.2"
    other = eqx.tree_at(lambda n: n.layers[head].weight, net,
                        5.0 * jax.random.normal(jax.random.key(7), net.layers[head].weight.shape))
    a = rule.estimate(net, x, y, jax.random.key(4)).grads
    b = rule.estimate(other, x, y, jax.random.key(4)).grads
    for node in ("stem.1/dense.0", "stem.1/group_linear.4"):
        np.testing.assert_array_equal(a.layers[node].weight, b.layers[node].weight)
    assert not np.array_equal(a.layers["mixer.1/dense.4"].weight,
                              b.layers["mixer.1/dense.4"].weight)


def test_tangents_average_down_the_variance(program):
    """K tangents per step: the spread of the estimate shrinks like 1/K."""
    plan = program.plan("lg-fg-a")
    net = lower(plan, jax.random.key(0), dtype=jnp.float64)
    x, y = _batch()

    def spread(k):
        est = dataclasses.replace(plan.algorithm.estimator, tangents=k)
        p = dataclasses.replace(plan, algorithm=dataclasses.replace(plan.algorithm, estimator=est))
        rule = UpdateRule.build(p, net)
        e = jax.jit(jax.vmap(lambda key: _backbone_jnp(rule.estimate(net, x, y, key).grads)))(
            jax.random.split(jax.random.key(11), 400))
        return float(np.asarray(e).var(axis=0).sum())

    ratio = spread(1) / spread(8)
    assert 5.0 < ratio < 12.0, f"variance ratio K=1 / K=8 is {ratio:.2f}, expected about 8"


def test_rademacher_noise_is_unbiased_too(program):
    plan = program.plan("lg-fg-a")
    est = dataclasses.replace(plan.algorithm.estimator, noise="rademacher")
    plan = dataclasses.replace(plan, algorithm=dataclasses.replace(plan.algorithm, estimator=est))
    net = lower(plan, jax.random.key(0), dtype=jnp.float64)
    x, y = _batch()
    rule = UpdateRule.build(plan, net)
    true = _backbone(_true_gradient(program, "lg-fg-a", net, x, y))
    e = jax.jit(jax.vmap(lambda k: _backbone_jnp(rule.estimate(net, x, y, k).grads)))(
        jax.random.split(jax.random.key(5), 4000))
    mean = np.asarray(e).mean(0)
    assert mean @ true / (np.linalg.norm(mean) * np.linalg.norm(true)) > 0.99


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 64), (1,)])
def test_rademacher_signs_are_fair_independent_coins(shape):
    """32 signs come from each random word: every value ±1, every bit position of the
    word a fair coin, neighbours (bits of one word) uncorrelated, a new key new signs."""
    from fgc.learning.estimators import sample_noise
    v = sample_noise("rademacher", jax.random.key(0), shape, jnp.float32)
    assert v.shape == shape and v.dtype == jnp.float32
    assert set(np.unique(np.asarray(v)).tolist()) <= {-1.0, 1.0}
    draws = np.asarray(jax.vmap(lambda k: sample_noise("rademacher", k, (4096,), jnp.float32))(
        jax.random.split(jax.random.key(1), 64)))                    # [64, 4096]
    per_bit = draws.reshape(64, -1, 32).mean(axis=(0, 1))              # each bit position
    assert np.abs(per_bit).max() < 5 * np.sqrt(1 / (64 * 128))         # 5 sigma
    neighbours = (draws[:, :-1] * draws[:, 1:]).mean()
    assert abs(neighbours) < 5 / np.sqrt(draws[:, 1:].size)
    other = sample_noise("rademacher", jax.random.key(2), shape, jnp.float32)
    assert shape == (1,) or not np.array_equal(v, other)


def _with_credit(plan, credit):
    from fgc.training.train import with_estimator
    return with_estimator(plan, credit=credit)


def test_ignore_norm_credits_a_dense_layer_per_group(program):
    """Under `credit = ignore_norm` a dense layer followed by a full LayerNorm answers to
    its own group's replicas (the released code's rule); `exact` sums every group."""
    plan = program.plan("lg-fg-w")
    exact = {n: c[0] for n, c in plan.credit_map("exact").weights.items()}
    loose = {n: c[0] for n, c in plan.credit_map("ignore_norm").weights.items()}
    assert exact["stem.1/dense.0"].groups == 0 and loose["stem.1/dense.0"].groups == 2
    # A group-linear layer followed by a per-group norm is per group under both rules.
    assert exact["stem.1/group_linear.4"] == loose["stem.1/group_linear.4"]
    assert exact["stem.1/group_linear.4"].groups == 2


def test_ignore_norm_lowers_weight_perturbation_variance(program):
    plan = program.plan("lg-fg-w")
    net = _net(program, "lg-fg-w")
    x, y = _batch()

    def spread(p):
        rule = UpdateRule.build(p, net)
        e = jax.jit(jax.vmap(lambda key: _backbone_jnp(rule.estimate(net, x, y, key).grads)))(
            jax.random.split(jax.random.key(12), 400))
        return float(np.asarray(e).var(axis=0).sum())

    assert spread(_with_credit(plan, "ignore_norm")) < 0.9 * spread(plan)


def test_credit_rules_agree_on_activity_sites_after_norms(program):
    """LocalMixer's sites follow their norms: both rules give the same estimate."""
    plan = program.plan("lg-fg-a")
    net = _net(program, "lg-fg-a")
    x, y = _batch()
    key = jax.random.key(3)
    a = _backbone(UpdateRule.build(plan, net).estimate(net, x, y, key).grads)
    b = _backbone(UpdateRule.build(_with_credit(plan, "ignore_norm"), net)
                  .estimate(net, x, y, key).grads)
    np.testing.assert_array_equal(a, b)


def test_credit_is_part_of_the_language():
    prog = fgc.loads(SPEC + """
algorithm lg-fg-w-coded {
  target = local
  greedy = true
  estimator = forward(perturb = weights, credit = ignore_norm)
}
""", "credit.fg")
    est = prog.plan("lg-fg-w-coded").algorithm.estimator
    assert est.credit == "ignore_norm"
    assert "credit=ignore_norm" in est.describe()
    with pytest.raises(fgc.SpecError) as e:
        fgc.loads(SPEC + "algorithm a {\n  estimator = forward(perturb = weights, "
                  "credit = ignore_norms)\n}\n", "bad.fg")
    assert "ignore_norm" in str(e.value) and "bad.fg:" in str(e.value)
