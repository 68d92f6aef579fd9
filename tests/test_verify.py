"""The learning core against ground truth: the credit map's regressions (each of the
biases found outside the LocalMixer corpus), ``fgc verify`` passing on unbiased rules,
and failing, naming the layers, on biased ones."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import fgc
from fgc.learning.reference import naive_objective, reference_grads
from fgc.learning.verify import _by_node, verify_plan
from fgc.lowering.lower import lower
from fgc.tools.cli import main
from fgc.training.train import with_estimator

HEAD = "head h = mean(patches) | linear(classes)\n"


def spec(block: str, *, head: str = HEAD, network: str = "x | patchify(2) | b()",
         loss: str = "loss local = h on blocks, replicate = [patches, groups], groups = 2",
         extra: str = "") -> str:
    return (f'input x = image(4, 4, 1), classes = 3\n{block}\n{head}\n'
            f'network {{\n  out {network}\n}}\n{loss}\n{extra}')


# Bug 1: the loss's source op (the block's last op) mixes every group.
SOURCE_MIXES = spec("block b() {\n  out in | group_linear(8, groups = 2) | layernorm(groups = 2) "
                    "| perturb | relu | layernorm\n}")
# Bug 2: batch norm after a site mixes positions (and examples).
BATCHNORM = spec("block b() {\n  out in | dense(8) | layernorm | perturb | relu "
                 "| batchnorm(affine = false)\n}",
                 loss="loss local = h on blocks, replicate = [patches]")
# Bug 3: head parameters before the head's mean.
HEAD_PARAMS = spec("block b() {\n  out in | dense(8) | layernorm | perturb | relu\n}",
                   head="head h = layernorm(groups = 2, affine = true) "
                        "| group_linear(8, groups = 2) | mean(patches) | linear(classes)\n")
# Bug 4: under a non-greedy local algorithm a site's walk entered the next block's head.
TWO_BLOCKS = spec("block b() {\n  out in | dense(8) | layernorm(groups = 2) | perturb | relu\n}\n"
                  "block m() {\n  out in | token_mix | layernorm | perturb | relu\n}",
                  network="x | patchify(2) | b() | m()",
                  extra="algorithm l-fg-a {\n  target = local\n  greedy = false\n"
                        "  estimator = forward(perturb = activity)\n}\n")


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _plan(text, algorithm, name="t.fg"):
    return fgc.loads(text, name).plan(algorithm)


def test_source_op_mixing_groups_sums_every_group():
    site = "b.1/perturb.2"
    credit = _plan(SOURCE_MIXES, "lg-fg-a").credit_map().sites[site]
    assert credit[0].groups == 0 and credit[0].patches
    assert verify_plan(_plan(SOURCE_MIXES, "lg-fg-a"), samples=2000).ok


def test_batchnorm_mixes_positions_and_examples():
    (credit,) = _plan(BATCHNORM, "lg-fg-a").credit_map().sites["b.1/perturb.2"]
    assert not credit.patches and not credit.examples
    assert verify_plan(_plan(BATCHNORM, "lg-fg-a"), samples=2000).ok


def test_head_params_before_the_mean_learn_by_their_full_gradient():
    plan = _plan(HEAD_PARAMS, "lg-bp")
    shared = plan.credit_map().shared
    assert set(shared) == {"loss:local@b.1/linear.3"} and shared["loss:local@b.1/linear.3"] == 8
    report = verify_plan(_plan(HEAD_PARAMS, "lg-bp"), samples=1)
    assert report.ok, report.format()  # exact rules compared allclose, heads included


def test_walk_stays_on_paths_to_its_own_loss():
    plan = _plan(TWO_BLOCKS, "l-fg-a")
    by_loss = {c.loss: c for c in plan.credit_map().sites["b.1/perturb.2"]}
    assert by_loss["loss:local@b.1"].patches  # the next block's token mixing is not on its path
    assert not by_loss["loss:local@m.1"].patches
    assert verify_plan(plan, samples=2000).ok


def test_naive_replicas_have_the_plain_losses_gradient():
    """The reference's premise: literal masked replicas give the plain loss's gradient
    on the backbone (and P·G times it on the shared head parameters)."""
    import equinox as eqx
    from fgc.lowering.modules import trainable
    plan = _plan(HEAD_PARAMS, "lg-bp")
    net = lower(plan, jax.random.key(0), dtype=np.float64)
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), np.float64)
    y = np.array([0, 2, 1])
    params, static = eqx.partition(net, trainable(net))
    naive = jax.grad(lambda p: naive_objective(eqx.combine(p, static), x, y))(params)
    naive, ref = _by_node(naive), _by_node(reference_grads(net, x, y))
    shared = "loss:local@b.1/linear.3"
    for node in ref:
        np.testing.assert_allclose(naive[node], (8 if node == shared else 1) * ref[node],
                                   rtol=1e-10, atol=1e-14, err_msg=node)


def test_ignore_norm_is_reported_biased():
    plan = with_estimator(_plan(SOURCE_MIXES, "lg-fg-a"), credit="ignore_norm")
    report = verify_plan(plan, samples=4000)
    assert not report.ok and "b.1/group_linear.0" in report.biased
    assert "BIASED" in report.format()


def test_a_broken_credit_map_is_caught():
    """Drop the group sum of one site by hand: verify names the layer it feeds."""
    plan = _plan(SOURCE_MIXES, "lg-fg-a")
    cmap = plan.credit_map()
    site = "b.1/perturb.2"
    broken = dataclasses.replace(cmap, sites={**cmap.sites, site: tuple(
        dataclasses.replace(c, groups=2) for c in cmap.sites[site])})
    plan = dataclasses.replace(plan, credit={**plan.credit, "exact": broken})
    report = verify_plan(plan, samples=4000)
    assert report.biased == ["b.1/group_linear.0"]


def test_verify_cli(tmp_path, capsys):
    path = tmp_path / "s.fg"
    path.write_text(SOURCE_MIXES)
    out = tmp_path / "r.json"
    assert main(["verify", str(path), "--algorithm", "lg-fg-a,lg-bp", "--samples", "500",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lg-fg-a (credit exact)" in text and "every group's update matches" in text
    assert [r["ok"] for r in json.loads(out.read_text())] == [True, True]
    assert main(["verify", str(path), "--algorithm", "lg-fg-a", "--credit", "ignore_norm",
                 "--samples", "4000"]) == 1
    assert "biased updates" in capsys.readouterr().err


def test_weight_perturbation_gives_heads_their_exact_gradient():
    """Heads (and backprop groups) get their exact gradient in the weight-perturbation
    pass, from the reverse pass around its jvp. That pass differentiated the fused
    loss's primal output as a plain broadcast, where every replica sees all of h: head
    parameters before the mean got P·G times their gradient (found by the oracle)."""
    report = verify_plan(_plan(HEAD_PARAMS, "lg-fg-w"), samples=2000)
    assert report.ok, report.format()
    head = next(l for l in report.layers if l.node == "loss:local@b.1/group_linear.1")
    assert head.rule == "exact" and head.rel_error < 1e-8
