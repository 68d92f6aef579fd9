"""Gradient guesses (Fournier et al. 2023): ``project(...)`` estimators, planned, run in
forward mode, and checked against the exact projection (``fgc verify``)."""

from __future__ import annotations

import json
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgc.errors import FgError
from fgc.learning import projection
from fgc.learning.estimators import UpdateRule
from fgc.learning.verify import verify_plan
from fgc.lowering.lower import count_params, lower
from fgc.lowering.modules import trainable
from fgc.plan.program import loads
from specs import guess_blocks

PRESETS = ("guess-local-a", "guess-local-w", "guess-ntk-a", "guess-ntk-w", "guess-random-a",
           "guess-random-w")

# target, guess, space, granularity: the other targets and guesses, every granularity
COMBOS = {
    "fixed-block-a": ("global", "fixed", "activity", "block"),
    "above-global-a": ("above", "above", "activity", "global"),
    "local-tensor-w": ("local", "random", "weights", "tensor"),
    "above-block-w": ("above", "local", "weights", "block"),
    "exact-global-w": ("global", "global", "weights", "global"),
    "exact-a": ("global", "global", "activity", "sample"),
    "exact-w": ("global", "global", "weights", "sample"),
    "exact-tensor-w": ("global", "global", "weights", "tensor"),
}


def _algorithms(combos) -> str:
    return "".join(f"\nalgorithm {n} {{\n  estimator = project(target = {t}, guess = {g}, "
                   f"space = {s}, granularity = {gr})\n}}\n" for n, (t, g, s, gr) in combos.items())


@pytest.fixture(scope="module")
def prog():
    return loads(guess_blocks(algorithms=_algorithms(COMBOS)))


@pytest.fixture(scope="module")
def bn_prog():
    return loads(guess_blocks(blocks=2, batchnorm=True))


@pytest.mark.parametrize("name", PRESETS)
def test_presets_pass_verify(prog, name):
    report = verify_plan(prog.plan(name), samples=1)
    assert report.ok, report.format()
    assert report.check.startswith("exact projection")
    projected = [l for l in report.layers if l.rule.startswith("project")]
    assert len(projected) == 3 and all(l.rel_error < 1e-8 for l in projected)


@pytest.mark.parametrize("name", ["fixed-block-a", "above-global-a", "local-tensor-w",
                                  "above-block-w"])
def test_targets_guesses_granularities_pass_verify(prog, name):
    report = verify_plan(prog.plan(name), samples=1)
    assert report.ok, report.format()


@pytest.mark.parametrize("name", ["guess-local-a", "guess-random-w"])
def test_batch_norm_couples_the_examples(bn_prog, name):
    """With batch norm in the blocks a per-sample ⟨G, G̃⟩ needs one jvp per example;
    the plan says where, and the result is still the exact projection."""
    plan = bn_prog.plan(name)
    (units,) = plan.units.values()
    assert units[0].coupled and not units[-1].coupled  # the last block: only the readout after it
    report = verify_plan(plan, samples=1)
    assert report.ok, report.format()


def _grads(plan, name_net=None):
    with jax.enable_x64(True):
        net = lower(plan, jax.random.key(0), dtype=jnp.float64)
        x = jax.random.uniform(jax.random.key(1), (5, 6), jnp.float64)
        y = jnp.array([0, 1, 2, 0, 1])
        est = eqx.filter_jit(UpdateRule.build(plan).estimate)(net, x, y, jax.random.key(2))
        return {n: [np.asarray(a) for a in jax.tree_util.tree_leaves(l)]
                for n, l in est.grads.layers.items()}


@pytest.mark.parametrize("name", ["exact-a", "exact-w", "exact-tensor-w", "exact-global-w"])
def test_global_guess_is_backprop(prog, name):
    """guess = global projects the target onto itself: the update is backprop's."""
    got, want = _grads(prog.plan(name)), _grads(prog.plan("bp"))
    backbone = [n for n in want if n.startswith("layer.") and want[n]]
    assert len(backbone) == 3
    for n in backbone:
        for a, b in zip(got[n], want[n]):
            assert np.abs(b).max() > 1e-6
            # ĝ = G · ‖G‖² / (‖G‖² + ε): backprop up to ε / ‖G_n‖² (~1e-7 here)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("name", ["guess-local-a", "guess-local-w"])
def test_verify_fails_on_a_broken_projection(prog, name, monkeypatch):
    monkeypatch.setattr(projection, "project", lambda dot, sq, eps: 2 * dot / (sq + eps))
    report = verify_plan(prog.plan(name), samples=1)
    assert not report.ok
    assert set(report.biased) == {"layer.1/dense.0", "layer.2/dense.0", "layer.3/dense.0"}
    assert report.problems and "MISMATCH" in report.format()


def test_plan_decides_targets_and_guesses(prog):
    (units,) = prog.plan("above-block-w").units.values()
    assert [u.block for u in units] == ["layer.1", "layer.2", "layer.3"]
    assert units[0].target_losses == ("loss:local@layer.2",)
    assert units[0].guess_losses == ("loss:local@layer.1",)
    assert units[-1].target_losses == ("loss:final@output",)  # above the last block: the readout
    (units,) = prog.plan("guess-local-a").units.values()
    assert units[-1].guess == "global" and "true gradient" in units[-1].note
    assert [u.guess for u in units[:-1]] == ["local", "local"]


def test_fixed_guess_is_a_buffer_that_never_learns(prog):
    import optax

    from fgc.training.train import make_step
    plan = prog.plan("fixed-block-a")
    net = lower(plan, jax.random.key(0))
    assert set(net.fixed.layers) == {n for i in (1, 2)
                                     for n in net.loss_head(f"loss:local@layer.{i}").head}
    assert count_params(net) == count_params(lower(prog.plan("bp"), jax.random.key(0)))
    rule = UpdateRule.build(plan)
    tx = optax.sgd(0.1)
    step = make_step(rule, tx)
    opt = tx.init(eqx.filter(net, trainable(net)))
    before = [np.asarray(a) for a in jax.tree_util.tree_leaves(net.fixed)]
    w0 = np.asarray(net.layers["layer.1/dense.0"].weight)
    x = jax.random.uniform(jax.random.key(1), (8, 6))
    new, _, _ = step(net, opt, x, jnp.arange(8) % 3, jax.random.key(3))  # donates `net`
    for a, b in zip(before, jax.tree_util.tree_leaves(new.fixed)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(new.layers["layer.1/dense.0"].weight, w0)


def test_cli_train_and_diagnose(tmp_path):
    spec = tmp_path / "g.fg"
    spec.write_text(guess_blocks(blocks=2))
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=rng.uniform(size=(32, 6)).astype("float32"),
             y_train=rng.integers(0, 3, 32), x_test=rng.uniform(size=(8, 6)).astype("float32"),
             y_test=rng.integers(0, 3, 8))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "fgc.tools.cli", "train", str(spec), "--dataset",
                        str(npz), "--epochs", "1", "--out", str(out), "--algorithm",
                        "guess-local-a", "--set", "train.batch_size=8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "projection: 2 parameter nodes in 2 blocks" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "guess-local-a" and np.isfinite(summary["test_error"])

    from fgc.tools.diagnose import diagnose
    res = diagnose(str(spec), "guess-local-a", tangents=(1,), batches=1, draws=2, batch_size=8,
                   dataset="synthetic", warmup_steps=0)
    rows = {b["block"]: b for b in res["blocks"]}
    assert set(rows) >= {"layer.1", "layer.2"}
    cos = rows["layer.2"]["activity"]["cos_e2e"][0]
    assert cos == pytest.approx(1.0)  # the last block learns by its true gradient
    assert -1.0 <= rows["layer.1"]["activity"]["cos_e2e"][0] < 1.0


@pytest.mark.parametrize("space", ["activity", "weights"])
def test_coupled_jvps_in_chunks_give_the_same_update(space):
    """``chunk = 2`` runs the per-example jvps of a batch of 5 two at a time (the last
    alone); the update equals the all-at-once one, and verify still passes. In weight
    space the batch-norm layers' own per-example vjps and jvps are the chunked ones."""
    algos = "".join(
        f"\nalgorithm {n} {{\n  estimator = project(target = global, guess = local, "
        f"space = {space}, granularity = sample{c})\n}}\n"
        for n, c in (("once", ", chunk = 8"), ("pairs", ", chunk = 2")))
    p = loads(guess_blocks(blocks=2, batchnorm=True, algorithms=algos))
    plan = p.plan("pairs")
    assert {plan.estimator_of(g).chunk for g in set(plan.assignment.values())} >= {2}
    once, pairs = _grads(p.plan("once")), _grads(p.plan("pairs"))
    assert any(a.size for n in once for a in once[n])
    for n in once:
        for a, b in zip(once[n], pairs[n]):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    assert verify_plan(p.plan("pairs"), samples=1, batch_size=5).ok


def test_chunk_of_a_projection_must_be_a_positive_integer():
    algos = ("\nalgorithm bad {\n  estimator = project(guess = local, space = activity, "
             "granularity = sample, chunk = 0)\n}\n")
    with pytest.raises(FgError, match="chunk must be an integer"):
        loads(guess_blocks(blocks=2, batchnorm=True, algorithms=algos))


def test_the_chunk_flag_sets_a_projection_chunk_and_tangents_are_refused():
    """``--chunk`` (train, diagnose, verify) reaches project(...)'s per-example jvps;
    ``--tangents`` has nothing to set there and says so."""
    from fgc.training.train import TrainingError, with_estimator
    algos = ("\nalgorithm g {\n  estimator = project(guess = local, space = activity, "
             "granularity = sample)\n}\n")
    plan = loads(guess_blocks(blocks=2, batchnorm=True, algorithms=algos)).plan("g")
    new = with_estimator(plan, chunk=3)
    chunks = {new.estimator_of(g).chunk for g in set(new.assignment.values())
              if new.estimator_of(g).kind == "project"}
    assert chunks == {3}
    with pytest.raises(TrainingError, match="--tangents sets the forward-gradient"):
        with_estimator(plan, tangents=4, chunk=3)


@pytest.mark.parametrize("guess,granularity,target", [
    ("local", "sample", "global"), ("random", "block", "global"), ("ntk", "sample", "local"),
    ("above", "block", "above"), ("global", "sample", "global")])
def test_recomputing_block_by_block_gives_the_same_update(guess, granularity, target):
    """recompute = true keeps only what crosses blocks and runs each unit in turn; with
    batch norm coupling the examples, its update equals the plain projection's (same key,
    same noise), and verify passes on it."""
    algos = "".join(
        f"\nalgorithm {n} {{\n  estimator = project(target = {target}, guess = {guess}, "
        f"space = activity, granularity = {granularity}{r})\n}}\n"
        for n, r in (("plain", ""), ("lean", ", recompute = true")))
    p = loads(guess_blocks(blocks=3, batchnorm=True, algorithms=algos))
    assert "recompute" in p.plan("lean").estimator_of(
        next(g for g in set(p.plan("lean").assignment.values())
             if p.plan("lean").estimator_of(g).kind == "project")).describe()
    plain, lean = _grads(p.plan("plain")), _grads(p.plan("lean"))
    assert sum(a.size for n in plain for a in plain[n]) > 0
    assert plain.keys() == lean.keys()
    for n in plain:
        for a, b in zip(plain[n], lean[n]):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=n)
    assert verify_plan(p.plan("lean"), samples=1, batch_size=5).ok


@pytest.mark.parametrize("args,message", [
    ("space = weights, granularity = sample, recompute = true", "needs space = activity"),
    ("space = activity, granularity = global, recompute = true", "granularity of sample or block"),
    ("space = activity, granularity = block, recompute = 1", "recompute must be true or false")])
def test_recompute_is_for_block_by_block_activity_projections(args, message):
    algos = f"\nalgorithm bad {{\n  estimator = project(guess = local, {args})\n}}\n"
    with pytest.raises(FgError, match=message):
        loads(guess_blocks(blocks=2, batchnorm=True, algorithms=algos))
