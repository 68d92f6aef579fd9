"""Planning and model state: what the plan decides once (credit map, warnings, resolved
constants) and batch norm's buffers through training, evaluation and checkpoints."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgc
from fgc.lowering.lower import count_params, lower
from fgc.lowering.modules import BatchStats, trainable
from fgc.training import checkpoint
from fgc.training.train import input_stats, make_step, prepare, with_estimator

MLP = """input x = image(4, 4, 1), classes = 3
block layer(width) {
  out in | dense(width) | layernorm | perturb | relu
}
head probe = linear(classes)
head readout = layernorm | linear(classes)
network {
  out x | flatten | NET
}
loss local = probe on blocks
loss final = readout on output
"""


def _mlp(net: str = "layer(8) * 2", extra: str = "") -> str:
    return MLP.replace("NET", net) + extra


def test_dead_site_and_frozen_parameters_warn():
    prog = fgc.loads(_mlp("layer(8) | stopgrad | layer(8)"), "w.fg")
    codes = {w.code: w for w in prog.plan("fg-a").warnings}
    assert set(codes) == {"W601", "W602"}
    assert "layer.1/perturb.2" in codes["W601"].message and codes["W601"].span.line == 3
    assert "`layer.1/dense.0`" in codes["W602"].message
    assert not prog.plan("lg-fg-a").warnings  # the local loss still reaches block 1


def test_greedy_global_target_freezes_all_but_the_last_block():
    prog = fgc.loads(_mlp(extra="algorithm gg {\n  target = global\n  greedy = true\n}\n"), "g.fg")
    (w,) = prog.plan("gg").warnings
    assert w.code == "W602" and "local target" in w.hint


def test_ignored_settings_warn():
    text = _mlp(extra="group first {\n  params = layer\n  estimator = backprop\n}\n"
                      "group heads {\n  params = heads(local)\n  weight_decay = 0.1\n}\n")
    plan = fgc.loads(text.replace("head probe = linear(classes)",
                                  "head probe = layernorm(affine = true) | linear(classes, bias = false)"),
                     "i.fg").plan("lg-fg-a")
    assert [w.code for w in plan.warnings] == ["W603"]  # lg-fg-a's estimator: every group has its own


def test_constants_resolve_in_sections():
    text = _mlp(extra="const LR = 0.05\nconst K = 3\nalgorithm mine {\n  target = local\n"
                      "  estimator = forward(perturb = activity, tangents = K)\n}\n"
                      "train {\n  optimizer = sgd(learning_rate = LR * 2, momentum = 0.9)\n"
                      "  weight_decay = LR / 10\n}\n")
    prog = fgc.loads(text, "c.fg")
    assert prog.train.optimizer.as_dict()["learning_rate"] == pytest.approx(0.1)
    assert prog.train.weight_decay == pytest.approx(0.005)
    assert prog.algorithms["mine"].estimator.tangents == 3
    with pytest.raises(fgc.SpecError, match=r"c\.fg:\d+:\d+: error\[E206\].*`LRX` is no constant"):
        fgc.loads(text.replace("LR * 2", "LRX"), "c.fg")


def test_tangents_on_a_backprop_algorithm_is_an_error():
    plan = fgc.loads(_mlp(), "t.fg").plan("bp")
    with pytest.raises(fgc.TrainingError, match="--tangents.*backprop"):
        with_estimator(plan, tangents=4)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
    return x, rng.integers(0, 3, n).astype(np.int32)


def test_normalize_none_is_honoured(tmp_path):
    x, y = _data()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    text = _mlp().replace("classes = 3", "classes = 3, normalize = none")
    prog = fgc.loads(text, "n.fg")
    run = prepare(prog, dataset=str(tmp_path / "d.npz"), batch_size=16)
    assert input_stats(prog, run.data) == ((0.0,), (1.0,))
    assert run.net.input_mean == (0.0,) and run.net.input_std == (1.0,)


BN = _mlp("layer(8) * 2").replace("| layernorm | perturb", "| batchnorm | perturb")


def test_batchnorm_keeps_running_statistics_out_of_the_optimizer():
    plan = fgc.loads(BN, "bn.fg").plan("lg-fg-a")
    net = lower(plan, jax.random.key(0))
    bn = net.layers["layer.1/batchnorm.1"]
    assert isinstance(bn.stats, BatchStats)
    params = eqx.filter(net, trainable(net))
    assert params.layers["layer.1/batchnorm.1"].stats.mean is None  # not a parameter
    assert count_params(net) == sum(p.size for p in jax.tree.leaves(params))


def test_batchnorm_state_trains_evaluates_and_checkpoints(tmp_path):
    x, y = _data(32)
    prog = fgc.loads(BN, "bn.fg")
    for algo in ("bp", "lg-fg-a", "fg-w"):
        run = prepare(prog, algorithm=algo, dataset=_dataset(x, y), batch_size=32)
        step = make_step(run.rule, run.tx, max_traces=1)
        net, opt = run.init_state()
        before = np.asarray(net.layers["layer.1/batchnorm.1"].stats.mean)
        xb, yb = jnp.asarray(x), jnp.asarray(y)
        for i in range(2):
            net, opt, _ = step(net, opt, xb, yb, jax.random.key(i))
        after = net.layers["layer.1/batchnorm.1"].stats
        # Two updates with momentum 0.1 of the first dense layer's batch mean.
        assert not np.allclose(after.mean, before)
        assert np.all(np.asarray(after.var) > 0)
        # Evaluation reads the running statistics: one example's logits do not depend
        # on the rest of its batch.
        one = np.asarray(net(xb[:1]))
        np.testing.assert_allclose(one, np.asarray(net(xb))[:1], rtol=1e-5, atol=1e-6)
        path = tmp_path / f"{algo}.eqx"
        checkpoint.save(path, {"epoch": 1, "step": 2}, (net, opt))
        _, (back, _) = checkpoint.load(path, run.init_state())
        np.testing.assert_array_equal(back.layers["layer.1/batchnorm.1"].stats.var, after.var)


def _dataset(x, y):
    from fgc.training.data import Dataset
    return Dataset("tiny", x, y, x, y, 3, (0.5,), (0.25,), "generated")


def test_check_prints_the_plans_warnings_and_the_credit_map(tmp_path, capsys):
    from fgc.tools.cli import main
    path = tmp_path / "w.fg"
    path.write_text(_mlp("layer(8) | stopgrad | layer(8)", extra="train {\n  algorithm = fg-a\n}\n"))
    assert main(["check", str(path)]) == 0  # warnings do not fail the check
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "warning[W601]" in err and "warning[W602]" in err
    assert main(["check", "--credit", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layer.2/perturb.2" in out and "dead sites (noise reaches no loss): layer.1/perturb.2" in out
