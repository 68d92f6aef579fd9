"""Aggregations of K tangents (mean, sum, orthogonal) and chunked tangents: the claims of
fgc/learning/aggregate.py checked against ground truth — `fgc verify` (jax.grad of the
independent reference) for unbiasedness, the unchunked estimate for chunks — and the
diagnostics for bad values."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgc
from fgc.errors import LoweringError, SpecError, TrainingError
from fgc.learning.aggregate import AGGREGATIONS, Aggregation, aggregation
from fgc.learning.estimators import UpdateRule
from fgc.learning.verify import verify_plan
from fgc.lowering.lower import lower
from fgc.tools.cli import build_parser, main
from fgc.training.train import prepare, with_estimator
from specs import local_mixer

SPEC = local_mixer("aggregate", image=4, classes=3, zero_readout=False)


@pytest.fixture(scope="module")
def program():
    return fgc.loads(SPEC, "aggregate.fg")


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(tree)])


# --- the registry -----------------------------------------------------------------------------

def test_registry_and_language_agree():
    assert {"mean", "sum", "orthogonal"} <= set(AGGREGATIONS)
    assert all(isinstance(a, Aggregation) for a in AGGREGATIONS.values())
    with pytest.raises(LoweringError, match="no aggregation `median`.*mean, sum, orthogonal"):
        aggregation("median")


def test_unknown_aggregation_in_a_spec_is_e207(program):
    text = SPEC + ("algorithm mine {\n  target = local\n  greedy = true\n"
                   "  estimator = forward(perturb = activity, aggregate = median)\n}\n")
    with pytest.raises(SpecError) as e:
        fgc.loads(text, "bad.fg")
    (d,) = e.value.diagnostics
    assert d.code == "E207" and "aggregate must be one of mean, sum, orthogonal" in d.message


@pytest.mark.parametrize("chunk", ["8", "0", "2.5"])
def test_bad_chunk_is_e206(chunk):
    text = SPEC + ("algorithm mine {\n  target = local\n  greedy = true\n  estimator = "
                   f"forward(perturb = activity, tangents = 4, chunk = {chunk})\n}}\n")
    with pytest.raises(SpecError) as e:
        fgc.loads(text, "bad.fg")
    (d,) = e.value.diagnostics
    assert d.code == "E206" and d.message == "chunk must be an integer from 1 to tangents (4)"
    assert "need not divide K" in d.hint


def test_command_line_overrides(program, capsys):
    plan = with_estimator(program.plan("lg-fg-a"), tangents=4, aggregate="orthogonal", chunk=3)
    est = plan.algorithm.estimator
    assert (est.tangents, est.aggregate, est.chunk) == (4, "orthogonal", 3)
    assert est.describe() == "forward(activity, gaussian, K=4, aggregate=orthogonal, chunk=3)"
    with pytest.raises(TrainingError, match="chunk 8 is more than the 4 tangents"):
        with_estimator(program.plan("lg-fg-a"), tangents=4, chunk=8)
    with pytest.raises(ValueError, match="aggregate must be one of"):
        with_estimator(program.plan("lg-fg-a"), aggregate="median")
    args = build_parser().parse_args(["train", "s.fg", "--out", "o", "--aggregate", "sum",
                                      "--chunk", "2"])
    assert (args.aggregate, args.chunk) == ("sum", 2)
    for argv in (["train", "s.fg", "--out", "o", "--aggregate", "median"],
                 ["diagnose", "s.fg", "-o", "o", "--aggregate", "mean,median"],
                 ["verify", "s.fg", "--chunk", "0"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)
        assert e.value.code == 2
    assert "median" in capsys.readouterr().err


def test_train_takes_them(program):
    from fgc.training.data import synthetic_dataset
    from fgc.training import runs
    data = synthetic_dataset(n_train=32, n_test=8, image_shape=(4, 4, 1), num_classes=3)
    run = prepare(program, algorithm="lg-fg-a", dataset=data, batch_size=8, tangents=4,
                  aggregate="sum", chunk=2)
    (fwd,) = [p for p in run.rule.passes if p.estimator.kind == "forward"]
    assert (fwd.estimator.aggregate, fwd.estimator.chunk) == ("sum", 2)
    assert runs.identity(run, tangents=4, credit=None, aggregate="sum")["aggregate"] == "sum"


# --- the maths --------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(3, 8), (8, 8), (12, 5)])
def test_orthogonal_directions(k, n):
    """Gram–Schmidt within each partition, each direction of length √(nK/r): orthogonal,
    zero beyond r = min(K, n), and E[u uᵀ] = I (what makes the estimate unbiased)."""
    v = jax.random.normal(jax.random.key(0), (k, 20_000, n))
    u = np.asarray(AGGREGATIONS["orthogonal"].prepare(v), np.float64)
    r = min(k, n)
    gram = np.einsum("kmi,lmi->mkl", u, u)
    want = np.zeros((k, k))
    want[np.arange(r), np.arange(r)] = n * k / r
    np.testing.assert_allclose(gram, np.broadcast_to(want, gram.shape), atol=1e-3 * n * k)
    cov = np.einsum("kmi,kmj->ij", u, u) / (k * u.shape[1])  # E[u uᵀ] over directions
    np.testing.assert_allclose(cov, np.eye(n), atol=0.05)
    # Every direction has mean zero: the other partitions' noise, which enters every
    # directional derivative, then adds no bias (Householder's signs alone fail this).
    np.testing.assert_allclose(u[:r].mean(axis=1), 0.0, atol=0.05)


def _estimates(program, algorithm, **changes):
    plan = with_estimator(program.plan(algorithm), **changes)
    net = lower(plan, jax.random.key(0), dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (3,), 0, 3)
    return _flat(UpdateRule.build(plan).estimate(net, x, y, jax.random.key(3)).grads)


@pytest.mark.parametrize("algorithm,agg", [
    ("lg-fg-a", "orthogonal"), pytest.param("lg-fg-w", "mean", marks=pytest.mark.slow),
    pytest.param("lg-fg-a", "mean", marks=pytest.mark.slow),
    pytest.param("lg-fg-w", "orthogonal", marks=pytest.mark.slow)])
def test_chunks_equal_the_unchunked_estimate(program, algorithm, agg):
    """K = 3 in chunks of 2 (a remainder chunk of 1 first) is the same update, in float64.
    (K stays small: each K is its own XLA program, and compiling them is the test's cost.)"""
    k = 3
    with jax.enable_x64(True):
        whole = _estimates(program, algorithm, tangents=k, aggregate=agg)
        chunked = _estimates(program, algorithm, tangents=k, aggregate=agg, chunk=2)
        np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-14)
        if agg == "mean":  # sum is K × mean, draw for draw
            total = _estimates(program, algorithm, tangents=k, aggregate="sum")
            heads = np.isclose(total, whole, rtol=1e-12, atol=1e-14)  # exact groups agree
            np.testing.assert_allclose(total[~heads], k * whole[~heads], rtol=1e-10)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("algorithm,agg", [
    pytest.param("fg-w", "orthogonal", marks=SLOW), pytest.param("fg-a", "orthogonal", marks=SLOW),
    pytest.param("lg-fg-w", "orthogonal", marks=SLOW), ("lg-fg-a", "orthogonal"),
    pytest.param("fg-a", "sum", marks=SLOW), pytest.param("lg-fg-w", "sum", marks=SLOW)])
def test_verify_passes(program, algorithm, agg):
    """Unbiased against jax.grad of the reference: orthogonal with expectation ∇J, sum with
    K·∇J (fgc verify's comparison), under every forward preset, K = 3."""
    plan = with_estimator(program.plan(algorithm), tangents=3, aggregate=agg)
    report = verify_plan(plan, samples=600)
    assert report.ok, report.format()
    forward = [l for l in report.layers if l.rule != "exact"]
    assert forward and all(l.expectation == (3.0 if agg == "sum" else 1.0) for l in forward)


def test_verify_sees_a_wrong_expectation(program, monkeypatch):
    """The check has power: sum compared with ∇J instead of K·∇J is reported biased."""
    monkeypatch.setattr(type(AGGREGATIONS["sum"]), "expectation", lambda self, k: 1.0)
    plan = with_estimator(program.plan("lg-fg-a"), tangents=3, aggregate="sum")
    report = verify_plan(plan, samples=60)  # a 3× bias: a few estimates show it
    assert not report.ok and report.biased


def test_verify_cli(tmp_path, capsys):
    path = tmp_path / "s.fg"
    path.write_text(SPEC)
    assert main(["verify", str(path), "--algorithm", "lg-fg-a", "--tangents", "4",
                 "--aggregate", "sum", "--chunk", "3", "--samples", "120"]) == 0
    out = capsys.readouterr().out
    assert "aggregate=sum, chunk=3" in out and "every group's update matches" in out


# --- fgc diagnose --aggregate -----------------------------------------------------------------

@pytest.fixture(scope="module")
def diagnosis(tmp_path_factory):
    """`fgc diagnose --aggregate mean,sum,orthogonal` on a miniature LocalMixer, end to end."""
    import json

    from specs import lean_mixer
    root = tmp_path_factory.mktemp("agg")
    spec = root / "tiny.fg"
    spec.write_text(lean_mixer("tiny aggregate"))
    out = root / "diag"
    status = main(["diagnose", str(spec), "--algorithm", "lg-fg-a", "--dataset", "synthetic",
                   "--tangents", "1,4", "--aggregate", "mean,sum,orthogonal", "--batches",
                   "1", "--draws", "8", "--batch-size", "8", "--warmup-steps", "3", "-q",
                   "-o", str(out)])
    return status, out, json.loads((out / "diagnose.json").read_text())


def test_diagnose_writes_numbers_and_figure(diagnosis):
    status, out, r = diagnosis
    assert status == 0
    assert (out / "aggregate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["mode"] == "aggregate" and r["aggregations"] == ["mean", "sum", "orthogonal"]
    assert r["tangents"] == [1, 4]
    every = r["aggregate"]["all"]
    for a in r["aggregations"]:
        assert len(every[a]["cos_target"]) == 2 and len(every[a]["variance"]) == 2
        assert all(0 < c <= 1 for c in every[a]["cos_target"])
    assert every["sum"]["expectation"] == [1.0, 4.0]
    assert {u["block"] for u in r["aggregate"]["blocks"]} == {"stem.1", "mixer.1"}


def test_diagnose_cosine_grows_with_k(diagnosis):
    every = diagnosis[2]["aggregate"]["all"]
    cos, var = every["mean"]["cos_target"], every["mean"]["variance"]
    assert cos[0] < cos[1]
    assert var[0] > var[1]
    # sum is K × mean draw for draw: the same direction and relative variance.
    np.testing.assert_allclose(every["sum"]["cos_target"], cos, rtol=1e-6)
    np.testing.assert_allclose(every["sum"]["variance"], var, rtol=1e-4)
