"""Training: the compiled step, optimizers per group, the run loop's files, resume,
faults (NaN, corrupt checkpoints, an existing run) and the `fgc train` command."""

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
from fgc.training import checkpoint
from fgc.front.config import Call
from fgc.training.data import synthetic_dataset
from fgc.errors import CheckpointError, TrainingError
from fgc.training.train import make_step, prepare, train
from specs import local_mixer

SPEC = local_mixer("tiny trainer", width=16) + """
train {
  batch_size = 32
  epochs = 2
  optimizer = sgd(learning_rate = 0.05, momentum = 0.9)
  schedule = linear
  weight_decay = 0.0001
  algorithm = lg-fg-a
}
"""


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "tiny.fg"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_train=160, n_test=64, image_shape=(8, 8, 1), num_classes=4)


def _arrays(net):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(net, eqx.is_array))]


def quiet(_):
    pass


def test_step_traces_once(spec_path, data):
    run = prepare(spec_path, dataset=data)
    step = make_step(run.rule, run.tx, max_traces=1)
    net, opt = run.init_state()
    for i in range(3):
        x = jnp.asarray(data.x_train[i * 32:(i + 1) * 32])
        y = jnp.asarray(data.y_train[i * 32:(i + 1) * 32])
        net, opt, losses = step(net, opt, x, y, jax.random.key(i))
    assert set(losses) == {"loss:local@stem.1", "loss:local@mixer.1", "loss:final@output"}
    assert all(np.isfinite(float(v)) for v in losses.values())


def test_the_loops_flat_step_is_make_step_to_the_bit(spec_path, data):
    """FlatStep (a plain jax.jit over the state's arrays, which the run loop calls) makes
    exactly make_step's updates and losses, and rebuilds the same pytree."""
    from fgc.training.flat_step import FlatStep
    from fgc.training.train import step_body
    run = prepare(spec_path, dataset=data)
    step = make_step(run.rule, run.tx)
    net, opt = run.init_state()
    copies = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, (net, opt))
    flat = FlatStep(step_body(run.rule, run.tx), *copies, max_traces=1)
    arrays = flat.arrays(*copies)
    # and as the run loop builds it: the smaller of the block-wise step's schedules
    copies = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, (net, opt))
    kept = FlatStep(step_body(run.rule, run.tx), *copies, max_traces=1,
                    schedules=run.rule.schedules())
    kept_arrays = kept.arrays(*copies)
    for i in range(3):
        def batch():  # fresh buffers: both steps donate theirs
            return (jnp.asarray(data.x_train[i * 32:(i + 1) * 32]),
                    jnp.asarray(data.y_train[i * 32:(i + 1) * 32]), jax.random.key(i))
        net, opt, want = step(net, opt, *batch())
        arrays, got = flat(arrays, *batch())
        kept_arrays, got_kept = kept(kept_arrays, *batch())
        assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}
        assert {k: float(v) for k, v in got_kept.items()} == {k: float(v) for k, v in want.items()}
    new_net, new_opt = flat.tree(arrays)
    for a, b in zip(_arrays((net, opt)), _arrays((new_net, new_opt))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_arrays((net, opt)), _arrays(kept.tree(kept_arrays))):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(new_net) == jax.tree.structure(net)
    with pytest.raises(ValueError, match="structure"):
        flat.arrays(net, None)


@pytest.mark.parametrize("algorithm", ["bp", "l-bp", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a"])
def test_every_algorithm_lowers_the_local_loss(spec_path, data, algorithm):
    """A few steps of each preset reduce the loss it trains (same batch, small lr)."""
    run = prepare(spec_path, dataset=data, algorithm=algorithm,
                  optimizer=Call("sgd", (("learning_rate", 0.02),)), schedule=Call("constant"))
    step = make_step(run.rule, run.tx)
    net, opt = run.init_state()
    x, y = jnp.asarray(data.x_train[:32]), jnp.asarray(data.y_train[:32])
    target = "loss:final@output" if algorithm in ("bp", "fg-w", "fg-a") else "loss:local@mixer.1"
    if algorithm in ("bp", "fg-w", "fg-a"):
        # The zero-initialised readout passes no gradient to the backbone at first: start it off.
        w = net.layers["loss:final@output/linear.2"].weight
        net = eqx.tree_at(lambda n: n.layers["loss:final@output/linear.2"].weight, net,
                          0.3 * jax.random.normal(jax.random.key(5), w.shape))
    first = None
    for i in range(30):
        net, opt, losses = step(net, opt, x, y, jax.random.key(i))
        first = float(losses[target]) if first is None else first
    assert float(losses[target]) < first


def test_optimizer_groups_lr_scale_and_weight_decay(spec_path, data):
    """The readout learns at lr × 0.1; weight decay touches weights only."""
    run = prepare(spec_path, dataset=data, algorithm="lg-bp",
                  optimizer=Call("sgd", (("learning_rate", 0.1),)), schedule=Call("constant"),
                  weight_decay=0.5)
    params = eqx.filter(run.net, eqx.is_array)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = run.tx.update(ones, run.tx.init(params), params)
    ro = updates.layers["loss:final@output/linear.2"]
    np.testing.assert_allclose(ro.bias, -0.01)  # lr 0.1 × 0.1, no decay on a bias
    dense = updates.layers["stem.1/dense.0"]
    w = run.net.layers["stem.1/dense.0"].weight
    np.testing.assert_allclose(dense.weight, -0.1 * (1 + 0.5 * w), rtol=1e-6)
    np.testing.assert_allclose(dense.bias, -0.1)


def test_linear_schedule_reaches_zero(spec_path, data):
    run = prepare(spec_path, dataset=data)
    total = run.steps_per_epoch * run.train.epochs
    sched = run.schedules["backbone"]
    assert float(sched(0)) == pytest.approx(0.05)
    assert float(sched(total)) == pytest.approx(0.0, abs=1e-9)


def test_run_writes_metrics_summary_and_checkpoint(spec_path, data, tmp_path):
    out = tmp_path / "run"
    summary = train(spec_path, out=out, dataset=data, log=quiet)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("train_loss", "losses", "test_error", "train_error", "lr",
                    "images_per_second", "seconds"):
            assert r[key] is not None, key
        assert set(r["losses"]) == {"local@stem.1", "local@mixer.1", "final@output"}
        assert 0 <= r["test_error"] <= 100
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("algorithm", "dataset", "epochs", "test_error", "train_error",
                "images_per_second", "wall_seconds"):
        assert on_disk[key] is not None, key
    assert on_disk["algorithm"] == "lg-fg-a" and on_disk["epochs"] == 2
    # the XLA options of the program the loop kept: one of the block-wise step's candidates
    candidates = prepare(spec_path, dataset=data).rule.schedules()
    assert on_disk["xla_options"] in [dict(c) for c in candidates]
    meta = checkpoint.read_meta(out / checkpoint.NAME)
    assert meta["epoch"] == 2 and meta["step"] == 2 * 5


def test_resume_after_interrupt_gives_the_same_parameters(spec_path, data, tmp_path):
    full = tmp_path / "full"
    train(spec_path, out=full, dataset=data, log=quiet)

    def interrupt(epoch, step):
        if epoch == 1 and step == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(spec_path, out=cut, dataset=data, log=quiet, on_step=interrupt)
    assert checkpoint.read_meta(cut / checkpoint.NAME)["epoch"] == 1
    train(spec_path, out=cut, dataset=data, log=quiet, resume=True)

    run = prepare(spec_path, dataset=data)
    like = run.init_state()
    _, (a, _) = checkpoint.load(full / checkpoint.NAME, like)
    _, (b, _) = checkpoint.load(cut / checkpoint.NAME, like)
    for x, y in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(x, y)
    epochs = [json.loads(l)["epoch"] for l in (cut / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(spec_path, data, tmp_path,
                                                                monkeypatch):
    import dataclasses

    import fgc.training.train as T
    real = T.iterate_batches
    data = dataclasses.replace(data, x_train=data.x_train.astype(np.float32) / 255,
                               x_test=data.x_test.astype(np.float32) / 255)

    def poisoned(*args, epoch, **kw):
        for xb, yb in real(*args, epoch=epoch, **kw):
            if epoch == 1:
                xb[:] = np.nan
            yield xb, yb

    monkeypatch.setattr(T, "iterate_batches", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"became nan at epoch 2, step 1") as e:
        train(spec_path, out=out, dataset=data, log=quiet)
    assert "checkpoint" in str(e.value)
    assert checkpoint.read_meta(out / checkpoint.NAME)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_existing_run_is_never_overwritten(spec_path, data, tmp_path):
    out = tmp_path / "run"
    train(spec_path, out=out, dataset=data, log=quiet, epochs=1)
    before = (out / checkpoint.NAME).read_bytes()
    with pytest.raises(TrainingError, match="--resume"):
        train(spec_path, out=out, dataset=data, log=quiet, epochs=1)
    assert (out / checkpoint.NAME).read_bytes() == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(spec_path, data, tmp_path, damage):
    """A damaged checkpoint is reported and the previous one used; both damaged: an error
    naming each."""
    out = tmp_path / "run"
    train(spec_path, out=out, dataset=data, log=quiet, epochs=1)
    ck, prev = out / checkpoint.NAME, out / checkpoint.PREVIOUS
    before = checkpoint.read_meta(prev)["step"]
    raw = ck.read_bytes()
    ck.write_bytes({"garbage": b"\x00\xffnot a checkpoint" * 10, "truncated": raw[:len(raw) // 2],
                    "empty": b""}[damage])
    lines = []
    train(spec_path, out=out, dataset=data, log=lines.append, epochs=1, resume=True)
    assert any(l.startswith(f"warning: {ck}") and f"step {before})" in l for l in lines), lines
    for p in (ck, prev):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(ck)) as e:
        train(spec_path, out=out, dataset=data, log=quiet, epochs=2, resume=True)
    assert str(prev) in str(e.value)


def test_resume_with_other_settings_is_refused(spec_path, data, tmp_path):
    out = tmp_path / "run"
    train(spec_path, out=out, dataset=data, log=quiet, epochs=1)
    with pytest.raises(CheckpointError, match="algorithm"):
        train(spec_path, out=out, dataset=data, log=quiet, epochs=1, resume=True,
              algorithm="lg-bp")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A disk full mid-write is one clear error and leaves the previous checkpoint as it was."""
    import errno
    import os
    path = tmp_path / checkpoint.NAME
    checkpoint.save(path, {"epoch": 1, "step": 0}, {"w": jnp.ones(3)})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is kept"):
        checkpoint.save(path, {"epoch": 2, "step": 0}, {"w": jnp.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.NAME]


def test_cli_train_and_missing_dataset(spec_path, data, tmp_path):
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
             y_test=data.y_test)
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "fgc.tools.cli", "train", str(spec_path), "--dataset",
                        str(npz), "--epochs", "1", "--out", str(out), "--algorithm", "lg-bp"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "epoch    1/1" in r.stdout and "test error" in r.stdout
    assert json.loads((out / "summary.json").read_text())["algorithm"] == "lg-bp"

    r = subprocess.run([sys.executable, "-m", "fgc.tools.cli", "train", str(spec_path), "--dataset",
                        "mnist", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "mnist" in r.stderr


def test_dataset_that_does_not_fit_the_spec(spec_path, tmp_path):
    wrong = synthetic_dataset(n_train=64, n_test=16, image_shape=(28, 28, 1))
    with pytest.raises(fgc.DataError, match=r"\[28, 28, 1\].*\[8, 8, 1\]"):
        train(spec_path, out=tmp_path / "w", dataset=wrong, log=quiet)
