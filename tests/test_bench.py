"""`fgc bench`: the measurements, the report, the JSON, and what bad input says.

One benchmark of a miniature LocalMixer (two algorithms, two timed steps) serves every test
that needs measurements; the rest fail before anything compiles.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import jax
import pytest

import fgc
from fgc.tools.bench import (BenchError, add_arguments, bench_spec, compare_replicated,
                       replicated_configs, supported_algorithms)
from fgc.lowering.lower import lower
from specs import local_mixer

TINY = local_mixer("tiny bench")

# The same network with only the final loss: no replicated loss, no local algorithms.
FINAL_ONLY = local_mixer("tiny bench", local=False)

# Two algorithms keep the test fast: XLA:CPU takes seconds per train step to compile, two
# to three times longer for forward-gradient steps; every algorithm goes the same path.
ALGORITHMS = ["bp", "lg-bp"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgc bench")
    add_arguments(p)
    return p


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.fg"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def final_only(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "final.fg"
    path.write_text(FINAL_ONLY)
    return path


@pytest.fixture(scope="module")
def bench_run(spec, tmp_path_factory):
    """`fgc bench` end to end through argparse: (exit status, stdout, stderr, JSON)."""
    out = tmp_path_factory.mktemp("out") / "bench.json"
    args = parser().parse_args([str(spec), "--algorithms", ",".join(ALGORITHMS),
                                "--batch-size", "8", "--steps", "2", "--warmup", "1",
                                "--json", str(out), "--profile", str(out.parent / "prof"),
                                "--profile-steps", "2"])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = args.fn(args)
    return status, stdout.getvalue(), stderr.getvalue(), json.loads(out.read_text())


def test_run_writes_json(bench_run):
    status, stdout, stderr, result = bench_run
    assert status == 0
    assert stdout.rstrip().endswith("bench.json")
    assert "[1/2] bp" in stderr and "[2/2] lg-bp" in stderr  # progress, not in the report
    assert result["batch_size"] == 8 and result["steps"] == 2 and result["warmup"] == 1
    assert result["jax"] == jax.__version__
    assert result["device"]["kind"] == jax.devices()[0].device_kind


def test_every_algorithm_measured(bench_run):
    result = bench_run[3]
    rows = {r["algorithm"]: r for r in result["algorithms"]}
    assert list(rows) == ALGORITHMS
    for r in rows.values():
        s = r["step_seconds"]
        assert s["n"] == 2 and len(s["all"]) == 2
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert r["compile_seconds"] > 0
        assert r["images_per_second"] == pytest.approx(8 / s["median"])
        assert r["flops"] > 0
        assert r["flops_per_second"] == pytest.approx(r["flops"] / s["median"])
        assert r["memory"]["temp_bytes"] >= 0 and r["footprint_bytes"] > 0
        assert r["losses_finite"]


def test_ratios_to_bp(bench_run):
    rows = {r["algorithm"]: r for r in bench_run[3]["algorithms"]}
    for figure in ("step_seconds", "compile_seconds", "flops", "footprint_bytes",
                   "images_per_second"):
        assert rows["bp"]["ratios_to_bp"][figure] == 1.0
    q = rows["lg-bp"]["ratios_to_bp"]
    assert q["flops"] == pytest.approx(rows["lg-bp"]["flops"] / rows["bp"]["flops"])
    assert q["step_seconds"] == pytest.approx(rows["lg-bp"]["step_seconds"]["median"]
                                              / rows["bp"]["step_seconds"]["median"])


def test_report_table(bench_run):
    stdout = bench_run[1]
    lines = stdout.splitlines()
    assert lines[0].startswith("fgc bench: tiny bench") and f"jax {jax.__version__}" in lines[0]
    header = lines[1].split()
    for column in ("algorithm", "compile", "step", "images/s", "GFLOP/step", "GFLOP/s", "×BP"):
        assert column in header
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert set(rows) == set(ALGORITHMS)
    assert rows["bp"][-3:] == ["1.00", "1.00", "1.00"]
    widths = {len(line) for line in lines[1:5]}
    assert len(widths) <= 2  # aligned (a row may end shorter than the header)
    assert "replicated loss `local@stem.1`, `local@mixer.1`: B=8 P=4 C=8 G=2 K=4" in stdout
    assert "naive/fused" in stdout


def test_replicated_comparison(bench_run):
    rep = bench_run[3]["replicated"]
    [cfg] = rep["configs"]  # both blocks' losses have the same size
    assert (cfg["batch"], cfg["patches"], cfg["channels"], cfg["groups"], cfg["classes"]) == \
        (8, 4, 8, 2, 4)
    assert cfg["losses"] == ["loss:local@stem.1", "loss:local@mixer.1"]
    for key in ("fused_jvp", "fused_vjp", "naive_jvp", "naive_vjp"):
        assert cfg[key]["seconds"]["median"] > 0 and cfg[key]["footprint_bytes"] > 0
    assert cfg["naive_over_fused_jvp"]["time"] > 0
    assert cfg["naive_over_fused_vjp"]["footprint"] > 0


def test_naive_replicated_skipped_over_limit():
    # Masks of 4·2·4·8 floats = 1 KiB: under 1 byte, not even compiled.
    tiny = compare_replicated(8, 4, 8, 2, 4, steps=1, warmup=0, naive_limit_bytes=1)
    assert "masks alone" in tiny["naive_jvp"]["skipped"]
    assert "compile_seconds" not in tiny["naive_jvp"]
    assert tiny["fused_jvp"]["seconds"]["n"] == 1
    # Under 4 KiB the masks fit, but XLA's memory analysis of the compiled naive VJP does not.
    small = compare_replicated(8, 4, 8, 2, 4, steps=1, warmup=0, naive_limit_bytes=4096)
    assert small["naive_vjp"]["skipped"].startswith("XLA needs")
    assert small["naive_vjp"]["footprint_bytes"] > 4096 and "seconds" not in small["naive_vjp"]
    assert small["naive_over_fused_vjp"]["footprint"] > 1
    assert "time" not in small["naive_over_fused_vjp"]


def test_no_replicated_loss(final_only):
    plan = fgc.load(final_only).plan("bp")
    assert replicated_configs(lower(plan, jax.random.key(0)), 8) == []


def test_unknown_algorithm_names_known_ones(spec):
    with pytest.raises(BenchError) as e:
        bench_spec(spec, ["bp", "lg-fg-aa"], steps=1)
    msg = str(e.value)
    assert isinstance(e.value, fgc.FgError)
    assert "`lg-fg-aa`" in msg and "did you mean `lg-fg-a`?" in msg
    for name in fgc.presets():
        assert name in msg.split("known:")[1]


def test_algorithm_the_spec_cannot_run(final_only):
    with pytest.raises(BenchError, match="algorithm `lg-bp` cannot run on") as e:
        bench_spec(final_only, ["bp", "lg-bp"], steps=1)
    assert "error[E505]" in str(e.value) and "--algorithms" in str(e.value)
    names, skipped = supported_algorithms(final_only)
    assert names == ["bp", "fg-w", "fg-a", "fa", "dfa"]
    assert set(skipped) == {"l-bp", "lg-bp", "lg-fg-w", "lg-fg-a", "l-fa", "lg-fa"}
    assert all("local" in why for why in skipped.values())


def test_spec_errors_are_fg_errors(tmp_path):
    bad = tmp_path / "bad.fg"
    bad.write_text(TINY.replace("dense(width)", "dens(width)"))
    with pytest.raises(fgc.SpecError):
        bench_spec(bad, ["bp"])
    with pytest.raises(fgc.FgError, match="no such file"):
        bench_spec(tmp_path / "missing.fg", ["bp"])


def test_bad_sizes(spec, capsys):
    with pytest.raises(BenchError, match="steps must be an integer ≥ 1"):
        bench_spec(spec, ["bp"], steps=0)
    with pytest.raises(SystemExit):
        parser().parse_args([str(spec), "--batch-size", "0"])
    assert "expected an integer ≥ 1" in capsys.readouterr().err


def test_json_folder_missing_fails_first(spec, tmp_path):
    args = parser().parse_args([str(spec), "--json", str(tmp_path / "no" / "out.json")])
    with pytest.raises(BenchError, match="does not exist"):
        args.fn(args)


SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.fg"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_in_the_corpus_benches_every_preset(path):
    """`fgc bench SPEC` without --algorithms runs what supported_algorithms returns: for
    the corpus, every preset (timing them all here would take minutes per spec)."""
    names, skipped = supported_algorithms(path)
    assert names == [n for n, a in fgc.presets().items() if a.estimator.kind != "project"] \
        and skipped == {}


def test_profile_traces_each_algorithm(bench_run):
    """`--profile DIR`: a Chrome trace per algorithm under DIR/ALGORITHM/, summarised in
    the JSON (the annotated steps, XLA's busy time within them) and in the report."""
    status, stdout, _, result = bench_run
    for r in result["algorithms"]:
        prof = r["profile"]
        trace = Path(prof["trace"])
        assert trace.is_file() and trace.name.endswith(".trace.json.gz")
        assert trace.is_relative_to(Path(prof["dir"])) and Path(prof["dir"]).name == r["algorithm"]
        s = prof["summary"]
        assert s["steps"] == 2
        assert 0 < s["xla_ms"] <= s["step_ms"] and s["host_ms"] >= 0
        assert s["ops"] and all(op["ms"] > 0 for op in s["ops"])
        assert f"profile of {r['algorithm']}: {prof['trace']}" in stdout
        # by kind: the tiny mixer's products are found and their FLOPs counted
        kinds = s["kinds"]
        assert kinds["matmul"]["gflop"] > 0 and kinds["matmul"]["ms"] > 0
        assert sum(k["ms"] for k in kinds.values()) > 0
    assert "by kind" in stdout and "matmul" in stdout
    assert all(result["ceilings"][k] > 0 for k in ("matmul_fp32", "stream"))
    assert "device ceilings (measured)" in stdout


def test_profile_summary_counts_overlapping_threads_once(tmp_path):
    """Busy time is the union of XLA threads' intervals inside annotated steps; events
    outside the steps and on the Python thread do not count."""
    import gzip

    from fgc.tools.bench.profile import STEP, summarise
    meta = [{"ph": "M", "name": "thread_name", "pid": 1, "tid": t, "args": {"name": n}}
            for t, n in ((1, "python"), (2, "xla-a"), (3, "xla-b"))]
    spans = [{"ph": "X", "pid": 1, "tid": 1, "name": STEP, "ts": 0, "dur": 1000},
             {"ph": "X", "pid": 1, "tid": 1, "name": "dispatch", "ts": 0, "dur": 900},
             {"ph": "X", "pid": 1, "tid": 2, "name": "dot", "ts": 100, "dur": 400},
             {"ph": "X", "pid": 1, "tid": 3, "name": "fusion", "ts": 300, "dur": 300},
             {"ph": "X", "pid": 1, "tid": 2, "name": "dot", "ts": 5000, "dur": 400}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + spans}, f)
    s = summarise(path)
    assert s["steps"] == 1 and s["step_ms"] == 1.0
    assert s["xla_ms"] == pytest.approx(0.5) and s["host_ms"] == pytest.approx(0.5)
    assert [(o["name"], o["ms"], o["count"]) for o in s["ops"]] == [("dot", 0.4, 1), ("fusion", 0.3, 1)]


def test_profile_dir_that_is_a_file(spec, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(BenchError, match="it is a file; give a folder"):
        bench_spec(spec, ["bp"], batch_size=2, steps=1, warmup=0, profile_dir=f)


def test_out_of_device_memory_is_a_message_not_a_traceback(monkeypatch, capsys):
    """XLA's RESOURCE_EXHAUSTED (ResNet-18 guess-local-a at batch 128 asked a 2-core CPU
    for 35 GB) says what to change; any other runtime error stays a traceback (a bug)."""
    import fgc.tools.bench.cli as bench_cli
    from fgc.tools.cli import main

    class JaxRuntimeError(RuntimeError):
        pass

    def oom(args):
        raise JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 35333683140 bytes.")
    monkeypatch.setattr(bench_cli, "run", oom)  # the parser binds `run` when main builds it
    assert main(["bench", "specs/mixer-m-1-16.fg"]) == 1
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "--batch-size" in err and "35333683140" in err

    def bug(args):
        raise JaxRuntimeError("INTERNAL: something else")
    monkeypatch.setattr(bench_cli, "run", bug)
    with pytest.raises(JaxRuntimeError):
        main(["bench", "specs/mixer-m-1-16.fg"])
