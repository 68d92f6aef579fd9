"""`fgc diagnose`: the statistics it reports, the files it writes, and what bad input says.

A miniature two-block LocalMixer on synthetic data keeps each diagnosis to seconds; one
run through the command line serves the tests that read its output.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from fgc.tools.diagnose import DiagnoseError, add_arguments, diagnose, format_table
from fgc.errors import SpecError
from specs import lean_mixer

SPEC = lean_mixer("tiny diagnose")

TANGENTS = (1, 8)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgc diagnose")
    add_arguments(p)
    return p


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("diagnose") / "tiny.fg"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def cli_run(spec, tmp_path_factory):
    """`fgc diagnose --algorithm lg-fg-a` end to end: (status, stdout, stderr, out dir)."""
    out = tmp_path_factory.mktemp("out") / "diag"
    args = parser().parse_args([str(spec), "--algorithm", "lg-fg-a", "--dataset", "synthetic",
                                "--tangents", ",".join(map(str, TANGENTS)), "--batches", "2",
                                "--draws", "4", "--batch-size", "16", "--warmup-steps", "3",
                                "-o", str(out)])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = args.fn(args)
    return status, stdout.getvalue(), stderr.getvalue(), out


@pytest.fixture(scope="module")
def result(cli_run):
    return json.loads((cli_run[3] / "diagnose.json").read_text())


def test_writes_json_and_figures(cli_run):
    status, stdout, stderr, out = cli_run
    assert status == 0
    for name in ("diagnose.json", "cosine.png", "variance.png", "variance_ratio.png"):
        data = (out / name).read_bytes()
        assert data, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "warm-up: 3 steps of lg-fg-a" in stderr
    assert "wrote" in stdout


def test_settings_recorded(result):
    assert result["algorithm"] == "lg-fg-a"
    assert result["target"] == "local" and result["greedy"] is True
    assert result["tangents"] == list(TANGENTS)
    assert (result["batch_size"], result["batches"], result["draws"]) == (16, 2, 4)
    assert result["dataset"] == "synthetic"
    assert result["estimators"]["activity"]["available"]
    assert result["estimators"]["weights"]["available"]
    assert result["end_to_end"]["available"]


def test_one_row_per_block(result):
    blocks = [u["block"] for u in result["blocks"]]
    assert blocks == ["stem.1", "mixer.1"]
    assert sum(u["params"] for u in result["blocks"]) == result["all"]["params"] \
        == result["estimated_parameters"]
    for u in result["blocks"] + [result["all"]]:
        for kind in ("activity", "weights"):
            s = u[kind]
            for field in ("cos_target", "cos_e2e", "variance"):
                assert len(s[field]) == len(TANGENTS), (u["block"], kind, field)
            assert all(-1 <= c <= 1 for c in s["cos_target"] + s["cos_e2e"])
            assert all(v > 0 for v in s["variance"])


def test_more_tangents_better_estimates(result):
    """K tangents average K independent estimates: the variance falls about K-fold and the
    cosine with the target rises."""
    k = TANGENTS[1] / TANGENTS[0]
    for kind in ("activity", "weights"):
        s = result["all"][kind]
        assert s["variance"][1] < s["variance"][0] / (k / 4), kind
        assert s["cos_target"][1] > s["cos_target"][0], kind


def test_activity_beats_weight_perturbation(result):
    """REFERENCE §6: activity perturbation has far less variance than weight perturbation."""
    a, w = result["all"]["activity"], result["all"]["weights"]
    assert all(va < vw for va, vw in zip(a["variance"], w["variance"]))
    assert a["cos_target"][0] > w["cos_target"][0]


def test_layers_compared_with_table_1(result):
    layers = {l["layer"]: l for l in result["layers"]}
    assert set(layers) == {"stem.1/dense.0", "mixer.1/token_mix.0", "mixer.1/group_linear.4"}
    dense, glin = layers["stem.1/dense.0"], layers["mixer.1/group_linear.4"]
    assert (dense["fan_in"], dense["fan_out"]) == (16, 8)  # 4×4 pixels per patch
    assert (glin["fan_in"], glin["fan_out"]) == (4, 4)  # per group: 8 channels / 2 groups
    for l in layers.values():
        assert l["ratio_measured"] > 1
        assert 0 < l["coherence"] <= 1 + 1e-6
        # Table 1 for a fixed batch: about fan-in for independent per-example gradients,
        # fan-in × N at most (all examples agree, coherence 1).
        fan = (l["fan_in"] * l["fan_out"] + 1) / (l["fan_out"] + 1)
        assert math.isclose(l["ratio_predicted"],
                            fan * result["batch_size"] * l["coherence"], rel_tol=1e-9)
        assert 0 < l["ratio_predicted"] <= fan * result["batch_size"] * (1 + 1e-6)


def test_table(cli_run, result):
    stdout = cli_run[1]
    assert stdout.startswith(format_table(result))
    for words in ("cosine with the target gradient (act/wt)",
                  "cosine with the end-to-end gradient (act/wt)",
                  "normalised variance", "vs REFERENCE Table 1", "stem.1", "mixer.1"):
        assert words in stdout


def test_global_target_is_the_end_to_end_gradient(spec):
    """FG-A targets the final loss without stop-gradients: its target is BP's gradient."""
    r = diagnose(spec, "fg-a", tangents=(2,), batches=1, draws=2, batch_size=8,
                 dataset="synthetic", warmup_steps=2)
    assert r["target"] == "global" and not r["greedy"]
    for kind in ("activity", "weights"):
        s = r["all"][kind]
        assert math.isclose(s["cos_target"][0], s["cos_e2e"][0], rel_tol=1e-3, abs_tol=1e-5)


def test_zero_readout_end_to_end_undefined(spec):
    """Without warm-up the zero-initialised readout passes no end-to-end gradient: reported
    as undefined (null), never as a cosine of 0."""
    r = diagnose(spec, "lg-fg-a", tangents=(1,), batches=1, draws=2, batch_size=8,
                 dataset="synthetic", warmup_steps=0)
    assert not r["end_to_end"]["available"]
    assert "zero" in r["end_to_end"]["note"]
    assert r["all"]["activity"]["cos_e2e"] == [None]
    assert r["all"]["activity"]["cos_target"][0] is not None
    assert "end-to-end gradient (act/wt)" not in format_table(r)


def test_warm_up_with_another_algorithm(spec):
    """`--warmup-algorithm lg-bp`: the warm-up trains with lg-bp, so the measured network is
    the one lg-bp's own steps give, whatever algorithm is measured on it; the report says so."""
    import jax
    import numpy as np

    from fgc.tools.common import load_program
    from fgc.tools.diagnose.measure import _warm_up, warm_up_run
    from fgc.tools.diagnose.setup import _batch_stream, _dataset
    from fgc.training.train import prepare
    prog = load_program(spec)
    data = _dataset(prog, "synthetic", None, 8, 1, 0)

    def warmed(algorithm, warmup):
        run = prepare(prog, algorithm=algorithm, dataset=data, batch_size=8, seed=0)
        stream = _batch_stream(run.data, 8, 0, False)
        warm = warm_up_run(prog, run, algorithm, warmup, data, None)
        return jax.tree_util.tree_leaves(_warm_up(run, stream, 3, warm, lambda _: None).layers)

    by_lg_bp = warmed("lg-fg-a", "lg-bp")
    for a, b in zip(by_lg_bp, warmed("lg-bp", None), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(by_lg_bp, warmed("lg-fg-a", None)))

    r = diagnose(spec, "lg-fg-a", tangents=(1,), batches=1, draws=2, batch_size=8,
                 dataset="synthetic", warmup_steps=2, warmup_algorithm="lg-bp")
    assert r["warmup_algorithm"] == "lg-bp" and r["end_to_end"]["available"]
    assert "warm-up: 2 steps of lg-bp" in format_table(r)
    with pytest.raises(SpecError, match="lg-bp"):
        diagnose(spec, "lg-fg-a", dataset="synthetic", warmup_steps=1,
                 warmup_algorithm="lg-bpp")


@pytest.mark.parametrize("algorithm, hint", [("bp", "fg-a"), ("lg-bp", "lg-fg-a")])
def test_backprop_algorithm_refused(spec, algorithm, hint):
    with pytest.raises(DiagnoseError) as e:
        diagnose(spec, algorithm, dataset="synthetic")
    assert "nothing to diagnose" in str(e.value)
    assert f"--algorithm {hint}" in str(e.value)


def test_unknown_algorithm(spec):
    with pytest.raises(SpecError) as e:
        diagnose(spec, "lg-fga", dataset="synthetic")
    assert "lg-fg-a" in str(e.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"tangents": ()}, "no tangent counts"),
    ({"tangents": (0, 4)}, "positive integers"),
    ({"draws": 1}, "at least two draws"),
    ({"batches": 0}, "batches must be"),
    ({"batch_size": -3}, "batch_size must be"),
])
def test_bad_settings(spec, kwargs, words):
    with pytest.raises(DiagnoseError) as e:
        diagnose(spec, "lg-fg-a", dataset="synthetic", **kwargs)
    assert words in str(e.value)


@pytest.mark.parametrize("argv", [["--tangents", "1,x"], ["--tangents", "0"], ["--draws", "1"]])
def test_bad_arguments(spec, argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args([str(spec), "-o", "out", *argv])
    assert e.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_cli_reports_errors_without_traceback(spec, capsys):
    from fgc.tools.cli import main
    status = main(["diagnose", str(spec), "--algorithm", "bp", "--dataset", "synthetic",
                   "-o", "unused"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err and "nothing to diagnose" in err


SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.fg"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_in_the_corpus_has_both_estimators(path):
    """Every corpus spec can be diagnosed with weight and activity perturbation side by side
    (the measurement itself is exercised on the miniature spec above)."""
    import fgc
    from fgc.tools.diagnose.setup import _variant_plans
    prog = fgc.load(path)
    for name in ("fg-a", "lg-fg-w"):
        plans, missing = _variant_plans(prog, prog.plan(name), name)
        assert set(plans) == {"activity", "weights"} and missing == {}


def test_a_non_finite_draw_is_an_error_not_null_statistics():
    """A NaN estimate used to leave every statistic ``null`` without a word."""
    import numpy as np

    from fgc.tools.diagnose.base import DiagnoseError, finite_draws
    d = np.ones((4, 3, 3))
    assert finite_draws(d, "x").shape == (4, 3, 3)
    d[2, 1, 0] = np.nan
    with pytest.raises(DiagnoseError, match="1 of 4 draws of the mean estimate"):
        finite_draws(d, "the mean estimate")
