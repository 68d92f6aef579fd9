"""Nothing lost: step-level checkpoints, fallback to the previous one, resume mid-epoch
bit-identical to an uninterrupted run, run identity, extension, and the run folder.

The kill -9 campaign trains a tiny MLP in a subprocess, kills it at seeded moments
(some before the first epoch ends, some while a checkpoint is being written), resumes,
and compares the final state byte for byte with an uninterrupted run.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from fgc.errors import CheckpointError, TrainingError
from fgc.training import checkpoint, runs
from fgc.training.data import synthetic_dataset
from fgc.training.train import prepare, train

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
# A tiny MLP: a few thousand parameters, one perturbation per layer.
spec "tiny mlp"
input x = image(4, 4, 1), classes = 4

block layer(width) {
  out in | dense(width) | layernorm | perturb | relu
}

head probe = linear(classes)
head readout = layernorm | linear(classes)

network {
  out x | flatten | layer(24) * 2
}

loss local = probe on blocks
loss final = readout on output

train {
  batch_size = 8
  epochs = 2
  optimizer = sgd(learning_rate = 0.05, momentum = 0.9)
  schedule = linear
  algorithm = lg-fg-a
}
"""
STEPS_PER_EPOCH = 10  # 80 examples / 8


def tiny_data():
    return synthetic_dataset(n_train=80, n_test=16, image_shape=(4, 4, 1), num_classes=4)


def quiet(_):
    pass


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "mlp.fg"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def full(spec_path, data, tmp_path_factory):
    """An uninterrupted run: its folder."""
    out = tmp_path_factory.mktemp("full") / "run"
    train(spec_path, out=out, dataset=data, log=quiet)
    return out


def payload(out: Path) -> bytes:
    return checkpoint.read(out / checkpoint.NAME)[1]


def losses(out: Path) -> list:
    return [(r["epoch"], r["losses"], r["test_error"])
            for r in runs.read_metrics(out / runs.METRICS)]


# --- mid-epoch resume ------------------------------------------------------------------------

def test_steps_then_resume_mid_epoch_is_bit_identical(spec_path, data, full, tmp_path):
    out = tmp_path / "cut"
    s = train(spec_path, out=out, dataset=data, log=quiet, steps=3)
    assert s["steps"] == 3 and not s["finished"] and s["epochs"] == 0
    assert checkpoint.read_meta(out / checkpoint.NAME)["step"] == 3
    train(spec_path, out=out, dataset=data, log=quiet, resume=True, steps=13)
    assert checkpoint.read_meta(out / checkpoint.NAME)["step"] == 13
    lines = []
    s = train(spec_path, out=out, dataset=data, log=lines.append, resume=True)
    assert any("resuming" in l and "step 13 of 20" in l for l in lines), lines
    assert s["finished"] and s["steps"] == 20
    assert payload(out) == payload(full)
    assert losses(out) == losses(full)


def test_one_epoch_run_interrupted_resumes(spec_path, data, tmp_path):
    """Ctrl-C (or a kill) in the only epoch loses at most a tenth of it."""
    def interrupt(epoch, step):
        if step == 6:
            raise KeyboardInterrupt

    out = tmp_path / "one"
    with pytest.raises(KeyboardInterrupt):
        train(spec_path, out=out, dataset=data, log=quiet, epochs=1, on_step=interrupt)
    assert checkpoint.read_meta(out / checkpoint.NAME)["step"] == 7
    train(spec_path, out=out, dataset=data, log=quiet, epochs=1, resume=True)
    assert checkpoint.read_meta(out / checkpoint.NAME)["step"] == STEPS_PER_EPOCH


def test_checkpoint_every_parses_steps_and_times():
    P = runs.Policy.parse
    assert P(None, 1000) == runs.Policy(100, 60.0)
    assert P(None, 3) == runs.Policy(1, 60.0)
    assert P("25", 10) == runs.Policy(25, None)
    assert P("90s", 10) == runs.Policy(None, 90.0) and P("5m", 1) == runs.Policy(None, 300.0)
    for bad in ("0", "-3", "1.5", "soon", "2d"):
        with pytest.raises(TrainingError, match="--checkpoint-every"):
            P(bad, 10)


# --- the kill -9 campaign --------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[4])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    sys.path.insert(0, sys.argv[5])
    from test_resume import tiny_data
    from fgc.training.train import train

    def step(epoch, i):
        print(epoch * 10 + i + 1, flush=True)
        time.sleep(0.02)

    train(sys.argv[1], out=sys.argv[2], dataset=tiny_data(), resume=sys.argv[3] == "1",
          checkpoint_every=2, log=lambda line: None, on_step=step)
    print("finished", flush=True)
""")
KILLS = 5


def _worker(spec, out, resume, tmp):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cache = jax.config.jax_compilation_cache_dir or os.path.join(tmp, "jax-cache")  # conftest's
    return subprocess.Popen([sys.executable, "-c", WORKER, str(spec), str(out), resume, cache,
                             str(ROOT / "tests")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _newest_step(out: Path) -> int | None:
    for name in (checkpoint.NAME, checkpoint.PREVIOUS):
        try:
            return checkpoint.read_meta(out / name)["step"]
        except CheckpointError:
            continue
    return None


def test_kill_9_campaign(spec_path, full, tmp_path):
    """Seeded SIGKILLs, each followed by a resume; the end state is the uninterrupted one."""
    rng = random.Random(10)
    total = 2 * STEPS_PER_EPOCH
    targets = sorted(rng.sample(range(1, STEPS_PER_EPOCH), 3) +
                     rng.sample(range(STEPS_PER_EPOCH, total - 1), KILLS - 3))
    out = tmp_path / "killed"
    kept = []
    for n, target in enumerate(targets):
        p = _worker(spec_path, out, "1" if n else "0", tmp_path)
        for line in p.stdout:
            if line.strip() == "finished" or int(line) >= target:
                break
        # anywhere in the next step: inside the step, the checkpoint write or its renames
        time.sleep(rng.uniform(0, 0.03))
        p.send_signal(signal.SIGKILL)
        p.wait()
        with p.stdout, p.stderr:  # closed, so no ResourceWarning (the suite makes them errors)
            assert p.returncode == -signal.SIGKILL, p.stderr.read()
        kept.append(_newest_step(out))
    assert sum(1 for k in kept if k is None or k < STEPS_PER_EPOCH) >= 2, kept
    p = _worker(spec_path, out, "1", tmp_path)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0 and stdout.rstrip().endswith("finished"), stderr
    assert "Traceback" not in stderr
    assert payload(out) == payload(full)
    assert losses(out) == losses(full)
    print(f"campaign: {KILLS} kills at steps {targets}, checkpoints kept at {kept}, "
          f"{KILLS} resumes, final state identical")


# --- the checkpoint fuzz ---------------------------------------------------------------------

def _mutations(raw: bytes, rng: random.Random):
    n = len(raw)
    i = rng.randrange(n)
    yield "flip a bit", raw[:i] + bytes([raw[i] ^ (1 << rng.randrange(8))]) + raw[i + 1:]
    i = rng.randrange(n)
    yield "flip a byte", raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
    yield "truncate", raw[:rng.randrange(n)]
    i = rng.randrange(n)
    yield "insert", raw[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9))) + raw[i:]
    i = rng.randrange(n)
    yield "delete", raw[:i] + raw[i + rng.randint(1, 40):]
    yield "append", raw + b"\n"
    yield "zeros", bytes(n)
    yield "header only", raw.split(b"\n", 1)[0] + b"\n"


def _resigned(raw: bytes, edit) -> bytes:
    """The checkpoint with its metadata edited and a *valid* checksum."""
    body = raw.split(b"\n", 1)[1]
    line, _, pay = body.partition(b"\n")
    return checkpoint.encode(edit(json.loads(line)), pay)


CRAFTED = {
    "a list": lambda m: [1, 2],
    "no epoch": lambda m: {k: v for k, v in m.items() if k != "epoch"},
    "epoch text": lambda m: {**m, "epoch": "1"},
    "epoch float": lambda m: {**m, "epoch": 1.0},
    "epoch 7": lambda m: {**m, "epoch": 7},
    "step negative": lambda m: {**m, "step": -1},
    "sums text": lambda m: {**m, "sums": "x"},
}


def test_checkpoint_fuzz(spec_path, data, full, tmp_path):
    """Random mutations of a real checkpoint: never a traceback, never a silent wrong resume
    (the damaged one is reported and the previous one used, or a clear error)."""
    run = prepare(spec_path, dataset=data)
    ident = runs.identity(run, tangents=None, credit=None)
    like = run.init_state()

    def check(meta, where):
        runs.compare(meta, ident, where)
        runs.check_position(meta, run.steps_per_epoch, run.train.epochs, where)

    folder = tmp_path / "fuzz"
    folder.mkdir()
    raw = (full / checkpoint.NAME).read_bytes()
    prev = (full / checkpoint.PREVIOUS).read_bytes()
    prev_step = checkpoint.read(full / checkpoint.PREVIOUS)[0]["step"]
    rng = random.Random(7)
    cases = [m for _ in range(25) for m in _mutations(raw, rng)]
    cases += [(name, _resigned(raw, f)) for name, f in CRAFTED.items()]
    for name, bad in cases:
        if bad == raw:
            continue
        (folder / checkpoint.NAME).write_bytes(bad)
        (folder / checkpoint.PREVIOUS).write_bytes(prev)
        lines = []
        where, meta, _ = checkpoint.latest(folder, like, check=check, log=lines.append)
        assert where.name == checkpoint.PREVIOUS and meta["step"] == prev_step, name
        assert len(lines) == 1 and lines[0].startswith(f"warning: {folder / checkpoint.NAME}"), \
            (name, lines)
        (folder / checkpoint.PREVIOUS).write_bytes(bad)
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            checkpoint.latest(folder, like, check=check, log=lines.append)
    assert len(cases) >= 200


def test_crafted_epoch_resumes_from_the_previous_checkpoint(spec_path, data, full, tmp_path):
    """`"epoch": 7` in a 2-epoch run (checksum valid) is reported, not "done"."""
    out = tmp_path / "seven"
    train(spec_path, out=out, dataset=data, log=quiet, steps=15)
    ck = out / checkpoint.NAME
    ck.write_bytes(_resigned(ck.read_bytes(), CRAFTED["epoch 7"]))
    lines = []
    s = train(spec_path, out=out, dataset=data, log=lines.append, resume=True)
    assert any(l.startswith(f"warning: {ck}: corrupt checkpoint (step 15 is not in epoch 8")
               and "previous checkpoint" in l and "(step 14)" in l for l in lines), lines
    assert s["finished"] and payload(out) == payload(full)


# --- identity and extension ------------------------------------------------------------------

def test_run_is_identified_by_its_canonical_spec_not_its_path(spec_path, data, tmp_path,
                                                              monkeypatch):
    from fgc.front.fmt import format_spec
    from fgc.front.parse import parse_file
    work = tmp_path / "w"
    work.mkdir()
    spec = work / "mlp.fg"
    spec.write_text(SPEC)
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    train("mlp.fg", out=out, dataset=data, log=quiet, steps=2)
    train(spec.resolve(), out=out, dataset=data, log=quiet, resume=True, steps=4)
    spec.write_text("# a new comment\n" + format_spec(parse_file(spec)))  # fgc fmt -w
    moved = tmp_path / "elsewhere.fg"
    moved.write_text(spec.read_text())
    train(moved, out=out, dataset=data, log=quiet, resume=True, steps=6)
    moved.write_text(SPEC.replace("layer(24)", "layer(25)"))
    with pytest.raises(CheckpointError, match="different run.*the spec"):
        train(moved, out=out, dataset=data, log=quiet, resume=True)
    with pytest.raises(CheckpointError, match="seed: 0 → 3"):
        train(spec, out=out, dataset=data, log=quiet, resume=True, seed=3)


def test_finished_run_is_extended_with_a_larger_epochs(spec_path, data, full, tmp_path):
    out = tmp_path / "ext"
    train(spec_path, out=out, dataset=data, log=quiet, epochs=1)
    lines = []
    train(spec_path, out=out, dataset=data, log=lines.append, epochs=1, resume=True)
    assert any("finished" in l and "larger --epochs" in l for l in lines), lines
    lines = []
    s = train(spec_path, out=out, dataset=data, log=lines.append, epochs=2, resume=True)
    assert any("extending the run from 1 to 2 epochs: the `linear` schedule now spans 2 "
               "epochs" in l and "goes from" in l for l in lines), lines
    assert s["epochs"] == 2 and s["finished"]
    with pytest.raises(CheckpointError, match="past the end.*--epochs 2"):
        train(spec_path, out=out, dataset=data, log=quiet, epochs=1, resume=True)


def test_extension_under_a_constant_schedule_equals_a_longer_run(spec_path, data, tmp_path):
    from fgc.front.config import Call
    const = {"schedule": Call("constant")}
    a, b = tmp_path / "a", tmp_path / "b"
    train(spec_path, out=a, dataset=data, log=quiet, epochs=1, **const)
    lines = []
    train(spec_path, out=a, dataset=data, log=lines.append, epochs=2, resume=True, **const)
    assert any("constant learning rate" in l for l in lines), lines
    train(spec_path, out=b, dataset=data, log=quiet, epochs=2, **const)
    assert payload(a) == payload(b)


# --- the run folder --------------------------------------------------------------------------

def _out_cases(tmp: Path):
    (tmp / "a-file").write_text("x")
    (tmp / "other").mkdir()
    (tmp / "other" / "notes.txt").write_text("mine")
    (tmp / "sumdir").mkdir()
    (tmp / "sumdir" / "summary.json").mkdir()
    return {
        "": "--out is empty",
        str(tmp / "a-file"): "is a file; --out names a folder",
        str(tmp / "a-file" / "run"): "a-file is a file, not a folder",
        str(tmp / "other"): "is not empty and holds no fgc run \\(notes.txt\\)",
        str(tmp / "sumdir"): "summary.json is a folder",
        "/proc/self/run": "cannot write to /proc/self/run",
    }


def test_bad_out_is_refused_before_training(spec_path, data, tmp_path):
    for out, message in _out_cases(tmp_path).items():
        with pytest.raises(TrainingError, match=message):
            train(spec_path, out=out, dataset=data, log=quiet, steps=1)
    assert os.listdir(tmp_path / "other") == ["notes.txt"]
    assert not (Path.cwd() / checkpoint.NAME).exists()


def test_cli_bad_out_is_one_line(spec_path, tmp_path):
    cases = _out_cases(tmp_path)
    for out in (str(tmp_path / "a-file" / "run"),):  # one start of python: the rest in-process
        r = subprocess.run([sys.executable, "-m", "fgc.tools.cli", "train", str(spec_path),
                            "--dataset", "mnist", "--out", out], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert cases


def test_disk_full_mid_run_keeps_the_previous_checkpoint(spec_path, data, full, tmp_path,
                                                         monkeypatch):
    import errno
    calls = {"n": 0}
    real = checkpoint.os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 5:  # the third checkpoint's file (each save syncs file + folder)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    out = tmp_path / "full-disk"
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(spec_path, out=out, dataset=data, log=quiet, checkpoint_every=2)
    monkeypatch.setattr(checkpoint.os, "fsync", real)
    assert checkpoint.read_meta(out / checkpoint.NAME)["step"] == 4
    assert sorted(os.listdir(out)) == sorted([checkpoint.NAME, checkpoint.PREVIOUS, runs.MARKER])
    train(spec_path, out=out, dataset=data, log=quiet, resume=True)
    assert payload(out) == payload(full)


def test_a_format_1_checkpoint_is_named_as_such(tmp_path):
    """The checkpoint of an older fgc: one line, not a traceback or a wrong resume."""
    path = tmp_path / checkpoint.NAME
    path.write_bytes(b'{"epoch": 1, "format": 1, "step": 5}\n' + bytes(100))
    with pytest.raises(CheckpointError, match="older fgc \\(format 1"):
        checkpoint.read(path)
