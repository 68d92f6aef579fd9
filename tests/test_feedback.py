"""Feedback alignment (FA, L-FA, LG-FA, DFA): the plan's matrices, the matrices as model
buffers (never trained, saved with the checkpoint), the rules against their independent
reference in ``fgc verify`` (and a broken rule caught), the diagnostics, and the tools."""

import json
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fgc
import fgc.learning.feedback as feedback_rules
from fgc.learning.estimators import UpdateRule
from fgc.learning.verify import verify_plan
from fgc.lowering.lower import count_params, lower
from fgc.lowering.modules import Feedback, trainable
from fgc.tools.cli import main
from fgc.training import checkpoint
from fgc.training.data import synthetic_dataset
from fgc.training.train import make_optimizer
from specs import local_mixer

ALGOS = ("fa", "l-fa", "lg-fa", "dfa")

MLP = """\
input x = image(4, 4, 1), classes = 3

block layer(width) {
  out in | dense(width) | layernorm | perturb | relu
}

head probe = linear(classes)
head readout = layernorm | linear(classes, init = zeros)

network {
  out x | flatten | layer(6) * 2
}

loss local = probe on blocks
loss final = readout on output
"""

CNN = """\
input x = image(6, 6, 2), classes = 3

block conv_block(width) {
  out in | conv(width, kernel = 3) | groupnorm(groups = 2) | perturb | relu
}

head aux = global_avgpool | linear(classes)
head readout = global_avgpool | linear(classes, init = zeros)

network {
  out x | conv_block(4) | conv_block(4)
}

loss local = aux on blocks
loss final = readout on output
"""

MIXER = local_mixer("tiny feedback mixer", image=4, classes=3, width=4)

SPECS = {"mlp": MLP, "mixer": MIXER, "cnn": CNN}



def _plan(text, algo):
    return fgc.loads(text, "t.fg").plan(algo)


# --- the plan decides, lowering creates ----------------------------------------------------

def test_plan_names_every_weight_layer_under_fa_and_the_output_points_under_dfa():
    fa = _plan(MIXER, "fa")
    layers = [n for n in fa.graph.topo() if fa.graph.node(n).role == "op"
              and fa.graph.node(n).params]
    assert [f.node for f in fa.feedback] == layers  # dense, group_linear, token_mix, ...
    assert {fa.graph.node(f.node).kind for f in fa.feedback} == \
        {"dense", "group_linear", "token_mix"}
    dfa = _plan(MIXER, "dfa")
    # every DFA layer's error enters after its activation (the residual add included)
    assert all(dfa.graph.node(f.node).kind == "relu" and f.classes == 3 for f in dfa.feedback)
    assert sorted(n for f in dfa.feedback for n in f.layers) == sorted(layers)
    assert _plan(MIXER, "bp").feedback == () and _plan(MIXER, "lg-fg-a").feedback == ()


def test_matrices_are_seeded_buffers_shaped_by_the_plan():
    plan = _plan(MIXER, "fa")
    a, b = lower(plan, jax.random.key(0)), lower(plan, jax.random.key(0))
    c = lower(plan, jax.random.key(1))
    for n, fb in a.feedback.items():
        assert isinstance(fb, Feedback) and fb.matrix.shape == a.layers[n].weight.shape
        np.testing.assert_array_equal(fb.matrix, b.feedback[n].matrix)
        assert not np.array_equal(fb.matrix, c.feedback[n].matrix)
        assert not np.allclose(fb.matrix, a.layers[n].weight)  # not the weight itself
    # the weights do not depend on the algorithm; buffers are not parameters
    bp = lower(_plan(MIXER, "bp"), jax.random.key(0))
    for n, layer in bp.layers.items():
        for x, y in zip(jax.tree.leaves(layer), jax.tree.leaves(a.layers[n])):
            np.testing.assert_array_equal(x, y)
    assert count_params(a) == count_params(bp)
    assert not any(jax.tree.leaves(trainable(a.feedback)))
    dfa = lower(_plan(MIXER, "dfa"), jax.random.key(0))
    assert {fb.matrix.shape for fb in dfa.feedback.values()} == {(3, 4)}


def test_optimizer_leaves_matrices_unchanged_and_checkpoints_keep_them(tmp_path):
    plan = _plan(MIXER + "train {\n  weight_decay = 0.1\n}\n", "l-fa")
    net = lower(plan, jax.random.key(0))
    tx, _ = make_optimizer(plan, plan.train, 10)
    params = eqx.filter(net, trainable(net))
    opt_state = tx.init(params)
    rule = UpdateRule.build(plan)
    x = jax.random.uniform(jax.random.key(3), (4, 4, 4, 1))
    y = jnp.arange(4) % 3
    est = rule.estimate(net, x, y, jax.random.key(4))
    updates, opt_state = tx.update(est.grads, opt_state, params)
    stepped = eqx.apply_updates(net, updates)
    moved = [n for n in net.layers if net.layers[n].__dict__.get("weight") is not None
             and not np.array_equal(net.layers[n].weight, stepped.layers[n].weight)]
    assert moved  # the step did change the weights
    for n, fb in net.feedback.items():
        np.testing.assert_array_equal(fb.matrix, stepped.feedback[n].matrix)
    path = tmp_path / checkpoint.NAME
    checkpoint.save(path, {"epoch": 0, "step": 1}, (stepped, opt_state))
    like = (lower(plan, jax.random.key(9)), opt_state)  # other matrices: loading replaces them
    _, (loaded, _) = checkpoint.load(path, like)
    for n, fb in stepped.feedback.items():
        np.testing.assert_array_equal(loaded.feedback[n].matrix, fb.matrix)
        assert not np.array_equal(like[0].feedback[n].matrix, fb.matrix)


# --- the rules against their reference --------------------------------------------------------

# fa on the conv net is the longest (its float64 convolutions compile slowly) and fa on the
# mixer the next: both `slow`; fa on the MLP, dfa and the local variants still check FA's
# backward and both nets' norms by default.
@pytest.mark.parametrize("algo,spec", [
    pytest.param(a, s, marks=pytest.mark.slow) if (a, s) in {("fa", "cnn"), ("fa", "mixer")}
    else (a, s)
    for a in ALGOS for s in sorted(SPECS)])
def test_verify_passes_against_the_independent_reference(spec, algo):
    report = verify_plan(_plan(SPECS[spec], algo), batch_size=3)
    assert report.ok, report.format()
    kinds = {"dfa": "direct_feedback_alignment"}.get(algo, "feedback_alignment")
    backbone = [l for l in report.layers if l.group == "backbone"]
    assert backbone and all(l.rule == kinds and "allclose" in l.check and l.rel_error < 1e-9
                            for l in backbone)
    if spec == "cnn":  # the group norms' scale and shift are checked too
        assert any("groupnorm" in l.node for l in backbone)
    assert "checks: " in report.format() and ("surrogate FA" in report.format() or
                                              "naive per-layer DFA" in report.format())


def _rule_differs_from_backprop(text, algo):
    rule = UpdateRule.build(_plan(text, algo))
    bp = UpdateRule.build(_plan(text, algo.replace("fa", "bp")))
    net = lower(_plan(text, algo), jax.random.key(0))
    net = eqx.tree_at(lambda n: n.layers["loss:final@output/linear.1"].weight, net,
                      jax.random.normal(jax.random.key(5), (6, 3)))
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1))
    y = jnp.arange(3) % 3
    a = rule.estimate(net, x, y, jax.random.key(2)).grads
    b = bp.estimate(net, x, y, jax.random.key(2)).grads
    return a.layers["layer.1/dense.0"].weight, b.layers["layer.1/dense.0"].weight


def test_fa_is_not_backprop():
    fa, bp = _rule_differs_from_backprop(MLP, "fa")
    assert float(jnp.abs(fa).sum()) > 0 and not np.allclose(fa, bp)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_verify_catches_a_rule_using_the_transposed_weight(spec, monkeypatch):
    monkeypatch.setattr(feedback_rules, "feedback_apply", lambda layer, b, x: layer(x))
    report = verify_plan(_plan(SPECS[spec], "l-fa"), batch_size=3)
    assert not report.ok and "MISMATCH" in report.format(), report.format()
    assert all(l.group == "backbone" for l in report.layers if not l.ok)
    if spec == "mlp":  # the last layer's update is the same either way: only the first differs
        assert report.biased == ["layer.1/dense.0"]


def test_verify_catches_a_rule_using_another_matrix(monkeypatch):
    orig = feedback_rules.feedback_apply
    monkeypatch.setattr(feedback_rules, "feedback_apply",
                        lambda layer, b, x: orig(layer, 2.0 * b[::-1], x))
    assert not verify_plan(_plan(MIXER, "lg-fa"), batch_size=3).ok

    run = feedback_rules.DirectFeedbackAlignment.run

    def other_b(self, params, static, x, labels, key):
        static = eqx.tree_at(lambda s: [s.feedback[k].matrix for k in sorted(s.feedback)],
                             static, replace_fn=lambda m: m[::-1])
        return run(self, params, static, x, labels, key)

    monkeypatch.setattr(feedback_rules.DirectFeedbackAlignment, "run", other_b)
    report = verify_plan(_plan(MLP, "dfa"), batch_size=3)
    assert not report.ok and "layer.1/dense.0" in report.biased, report.format()


# --- the language ------------------------------------------------------------------------------

def _codes(text, algo=None):
    with pytest.raises(fgc.SpecError) as e:
        prog = fgc.loads(text, "bad.fg")
        prog.plan(algo)
    return e.value.codes, str(e.value)


def test_call_form_and_its_diagnostics():
    prog = fgc.loads(MLP + "algorithm wide {\n  target = global\n  greedy = false\n"
                     "  estimator = feedback_alignment(scale = 2)\n}\n", "t.fg")
    plan = prog.plan("wide")
    assert plan.estimator_of("backbone").scale == 2.0
    a, b = lower(plan, jax.random.key(0)), lower(prog.plan("fa"), jax.random.key(0))
    for n in a.feedback:
        np.testing.assert_allclose(a.feedback[n].matrix, 2 * b.feedback[n].matrix, rtol=1e-6)
    algo = "algorithm bad {{\n  estimator = {}\n}}\n"
    assert _codes(MLP + algo.format("feedback_alignment(seed = 1)"))[0] == ["E203"]
    assert _codes(MLP + algo.format("direct_feedback_alignment(scale = 0)"))[0] == ["E206"]
    assert _codes(MLP + algo.format("feedback_alignment(1)"))[0] == ["E205"]
    codes, text = _codes(MLP + algo.format("feedback_alignmnt"))
    assert codes == ["E207"] and "feedback_alignment" in text


def test_dfa_with_local_losses_is_refused():
    codes, text = _codes(MLP + "algorithm l-dfa {\n  target = local\n  greedy = true\n"
                         "  estimator = direct_feedback_alignment\n}\n", "l-dfa")
    assert codes == ["E509"] and "final loss" in text and "target = global" in text
    # a norm with parameters inside a layer's segment learns from it; one before the layer not
    inside = MLP.replace("| layernorm |", "| layernorm(affine = true) |")
    assert verify_plan(_plan(inside, "dfa"), batch_size=3).ok
    codes, text = _codes(MLP.replace("out in | dense(width)",
                                     "out in | layernorm(affine = true) | dense(width)"), "dfa")
    assert codes == ["E510"] and "layer.1/layernorm.0" in text and "segment" in text


# --- training and the tools --------------------------------------------------------------------

def test_cli_trains_with_fa_on_small_data(tmp_path):
    data = synthetic_dataset(n_train=96, n_test=32, image_shape=(4, 4, 1), num_classes=3)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
             y_test=data.y_test)
    spec = tmp_path / "mlp.fg"
    spec.write_text(MLP + "train {\n  batch_size = 32\n}\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "fgc.tools.cli", "train", str(spec), "--dataset",
                        str(npz), "--epochs", "2", "--out", str(out), "--algorithm", "fa"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "feedback alignment" in r.stdout and "epoch    2/2" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "fa" and summary["steps"] == 6
    # resume loads the matrices back: a finished run says so and exits cleanly
    r = subprocess.run([sys.executable, "-m", "fgc.tools.cli", "train", str(spec), "--dataset",
                        str(npz), "--epochs", "2", "--out", str(out), "--algorithm", "fa",
                        "--resume"], capture_output=True, text=True)
    assert r.returncode == 0 and "finished" in r.stdout, r.stderr


@pytest.mark.parametrize("algo", ALGOS)
def test_check_credit_and_viz_run(algo, tmp_path, capsys):
    spec = tmp_path / "m.fg"
    spec.write_text(MIXER)
    assert main(["check", str(spec), "--credit", "--algorithm", algo]) == 0
    assert main(["viz", str(spec), "--algorithm", algo, "-o", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    capsys.readouterr()
