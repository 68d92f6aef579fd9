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


# --- the registry, the diagnostics and the credit ---------------------------------------------

import dataclasses
import json

import fgc
from fgc.errors import SpecError
from fgc.graph import loss_kinds
from fgc.learning.verify import verify_plan
from fgc.lowering.loss_rules import RULES

ONE_BLOCK = """
spec "contrastive, one block"
input x = image(4, 4, 1), classes = 3
block stem(width, groups) {
  h = in | dense(width) | layernorm | perturb | relu
  out h | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb | relu
}
head proj(groups) = layernorm(groups = groups) | mean(patches) | linear(4)
head readout = stopgrad | mean(patches) | layernorm | linear(classes, init = zeros)
network {
  out x | patchify(2) | stem(4, 2)
}
loss local = proj(2) on blocks, replicate = [patches, groups], groups = 2, kind = contrastive%s
loss final = readout on output
train {
  views = 2
  augment = byol(min_area = 0.5)
}
"""


def _codes(text):
    with pytest.raises(SpecError) as e:
        fgc.loads(text).plan("lg-fg-a")
    return [d.code for d in e.value.diagnostics]


def test_every_kind_is_lowered_and_xent_is_one_registration():
    assert set(RULES) == set(loss_kinds.LOSS_KINDS) >= {"xent", "contrastive"}
    xent = loss_kinds.LOSS_KINDS["xent"]
    assert (xent.targets, xent.output, xent.options) == ("labels", "classes", ())
    assert not xent.couples_examples({})
    c = loss_kinds.LOSS_KINDS["contrastive"]
    assert c.targets == "views" and c.defaults() == {"temperature": 0.5, "stop_keys": True}
    assert not c.couples_examples({}) and c.couples_examples({"stop_keys": False})
    with pytest.raises(ValueError, match="already registered"):
        loss_kinds.register_loss_kind(xent)


def test_loss_kind_diagnostics():
    assert _codes((ONE_BLOCK % "").replace("kind = contrastive", "kind = simclr")) == ["E207"]
    assert _codes(ONE_BLOCK % ", temperature = 0") == ["E206"]
    assert _codes(ONE_BLOCK % ", stop_keys = 3") == ["E206"]
    assert _codes(ONE_BLOCK % ", tau = 0.1") == ["E203"]
    # a cross-entropy has no temperature
    assert "E203" in _codes(ONE_BLOCK.replace("kind = contrastive", "kind = xent")
                            % ", temperature = 0.1")
    # an embedding head must give a vector
    assert "E401" in _codes((ONE_BLOCK % "").replace(
        "head proj(groups) = layernorm(groups = groups) | mean(patches) | linear(4)",
        "head proj(groups) = layernorm(groups = groups) | linear(4)"))
    assert _codes((ONE_BLOCK % "").replace("views = 2", "views = 1")) == ["E408"]
    assert _codes((ONE_BLOCK % "").replace("views = 2", "")) == ["E408"]
    assert _codes((ONE_BLOCK % "").replace("min_area = 0.5", "min_area = 2")) == ["E206"]
    assert _codes((ONE_BLOCK % "").replace("byol(min_area = 0.5)", "simclr")) == ["E207"]


def test_coupled_loss_is_credited_over_the_batch_and_verify_proves_it(monkeypatch):
    spec = ONE_BLOCK % ", stop_keys = false"
    cmap = fgc.loads(spec).plan("lg-fg-a").credit_map()
    assert all(not c.examples for cs in cmap.sites.values() for c in cs)
    assert all(c.examples for cs in fgc.loads(ONE_BLOCK % "").plan("lg-fg-a").credit_map()
               .sites.values() for c in cs)
    report = verify_plan(fgc.loads(spec).plan("lg-fg-a"), samples=256)
    assert report.ok, report.format()
    # Had the kind not declared that it couples examples, each unit would answer to its
    # own example's replicas only: verify finds that biased.
    kind = loss_kinds.LOSS_KINDS["contrastive"]
    monkeypatch.setitem(loss_kinds.LOSS_KINDS, "contrastive",
                        dataclasses.replace(kind, couples=lambda opts: False))
    wrong = verify_plan(fgc.loads(spec).plan("lg-fg-a"), samples=256)
    assert set(wrong.biased) == {"stem.1/dense.0", "stem.1/group_linear.4"}, wrong.format()


TWO_BLOCKS = """
spec "contrastive, two blocks"
input x = image(4, 4, 1), classes = 3
block stem(width, groups) {
  h = in | dense(width) | layernorm | perturb | relu
  out h | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb | relu
}
block mixer(width, groups) {
  t = in | token_mix | layernorm | perturb | relu
  h = t | dense(width) | layernorm | perturb | relu
  out h | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb
        | add(in) | relu
}
head proj(groups) = layernorm(groups = groups) | mean(patches) | linear(4)
head embedding = mean(patches) | linear(4)
head readout = stopgrad | mean(patches) | layernorm | linear(classes, init = zeros)
network {
  out x | patchify(2) | stem(4, 2) | mixer(4, 2)
}
loss local = proj(2) on blocks, replicate = [patches, groups], groups = 2, kind = contrastive
loss embed = embedding on output, kind = contrastive
loss final = readout on output
train {
  views = 2
  augment = byol(min_area = 0.5)
}
"""


def test_fgc_verify_passes_on_a_small_contrastive_spec(tmp_path, capsys):
    from fgc.tools.cli import main
    path = tmp_path / "c.fg"
    path.write_text(TWO_BLOCKS)
    out = tmp_path / "v.json"
    assert main(["verify", str(path), "--algorithm", "lg-fg-a", "--samples", "256",
                 "--json", str(out)]) == 0, capsys.readouterr().out
    reports = json.loads(out.read_text())
    reports = reports if isinstance(reports, list) else reports.get("reports", [reports])
    assert all(r["ok"] for r in reports) and len(reports) == 1
    assert not any(r["inconclusive"] for r in reports)


def test_verify_calls_a_batch_of_one_example_inconclusive(tmp_path, capsys):
    # Two views of one example: InfoNCE has no negatives and is constant, every
    # forward-gradient reference is zero, and a "pass" would have compared zeros.
    from fgc.tools.cli import main
    report = verify_plan(fgc.loads(TWO_BLOCKS).plan("lg-fg-a"), samples=8, batch_size=2)
    assert report.ok and report.inconclusive
    assert all(l.zero for l in report.layers if l.check.startswith("mean"))
    assert "verdict: inconclusive" in report.format() and "ok (zero)" in report.format()
    path = tmp_path / "c.fg"
    path.write_text(TWO_BLOCKS)
    assert main(["verify", str(path), "--algorithm", "lg-fg-a", "--samples", "8",
                 "--batch-size", "2"]) == 1
    assert "inconclusive for lg-fg-a" in capsys.readouterr().err


def test_a_contrastive_loss_refuses_a_batch_of_one_example():
    from fgc.errors import TrainingError
    from fgc.training.data import Dataset
    from fgc.training.prepare import prepare
    text = TWO_BLOCKS.replace("  views = 2\n", "  views = 2\n  batch_size = 1\n")
    with pytest.raises(SpecError, match=r"E408.*batch_size 1.*constant") as e:
        fgc.loads(text, "c.fg")
    assert "c.fg:" in str(e.value) and "batch_size to 2 or more" in str(e.value)
    rng = np.random.default_rng(0)
    data = Dataset("tiny", rng.uniform(size=(8, 4, 4, 1)).astype(np.float32),
                   rng.integers(0, 3, 8), rng.uniform(size=(4, 4, 4, 1)).astype(np.float32),
                   rng.integers(0, 3, 4), 3, (0.5,), (0.3,), "generated")
    with pytest.raises(TrainingError, match="--batch-size 2 or more"):
        prepare(fgc.loads(TWO_BLOCKS), dataset=data, batch_size=1)


def test_readout_is_the_classifier_and_bp_trains_from_the_contrastive_loss():
    from fgc.lowering.lower import lower
    plan = fgc.loads(TWO_BLOCKS).plan("bp")
    net = lower(plan, jax.random.key(0))
    assert net.final_loss == "loss:final@output"
    # BP: the backbone answers to the contrastive `embed` only (the readout's own stopgrad)
    reach = {c.loss for cs in plan.credit_map().weights.values() for c in cs}
    assert reach == {"loss:embed@output"}


# --- views and training -----------------------------------------------------------------------

from fgc.front.config import Call
from fgc.training.views import make_views


def test_views_are_seeded_batched_and_laid_out_view_by_view():
    make = jax.jit(make_views(2, Call("byol", (("min_area", 0.5),))))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    y = jnp.arange(4, dtype=jnp.int32)
    v, labels = make(jax.random.key(0), x, y)
    assert v.shape == (8, 8, 8, 3) and v.dtype == jnp.float32
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    again, _ = make(jax.random.key(0), x, y)
    assert bool(jnp.all(again == v))                       # a pure function of (key, batch)
    other, _ = make(jax.random.key(1), x, y)
    assert float(jnp.abs(other - v).mean()) > 0.01
    assert float(jnp.abs(v[:4] - v[4:]).mean()) > 0.01       # the two views differ
    assert make_views(1, None) is None                       # no views: the batch as it is
    plain = make_views(2, None)(jax.random.key(0), x, y)[0]  # two copies, scaled to [0, 1]
    np.testing.assert_allclose(plain[4:], np.asarray(x) / 255.0, rtol=1e-6)


@pytest.mark.slow
def test_cli_trains_the_contrastive_m_8_16_spec_on_tiny_data(tmp_path):
    r = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=r.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y_train=r.integers(0, 10, 8).astype(np.int32),
             x_test=r.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             y_test=r.integers(0, 10, 4).astype(np.int32))
    from fgc.tools.cli import main
    out = tmp_path / "run"
    assert main(["train", "specs/mixer-m-8-16-contrastive.fg", "--dataset", str(npz),
                 "--batch-size", "4", "--epochs", "1", "--no-train-error",
                 "--out", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # the InfoNCE of 2B = 8 rows starts near log(7); the readout is the test error
    assert abs(row["losses"]["local@stem.1"] - np.log(7)) < 0.5
    assert row["train_loss"] == row["losses"]["final@output"]
    assert 0.0 <= row["test_error"] <= 100.0 and row["step"] == 2
    assert json.loads((out / "summary.json").read_text())["algorithm"] == "lg-fg-a"
