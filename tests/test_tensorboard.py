"""`fgc train --tensorboard`: each epoch's metrics as TensorBoard scalars."""

import struct

import numpy as np
import pytest

from fgc.tools.cli import main
from fgc.training.data import synthetic_dataset

pytest.importorskip("tensorboardX", reason="tensorboardX is not installed "
                    "(pip install -e '.[tensorboard]')")

SPEC = """
input x = image(8, 8, 1), classes = 4
block stem(width) {
  out in | dense(width) | layernorm | perturb | relu
}
head h = mean(patches) | linear(classes)
network { out x | patchify(2) | stem(8) }
loss local = h on blocks
loss final = h on output
train {
  batch_size = 32
  epochs = 2
}
"""


def scalars(logdir):
    """(tag, step, value) of every scalar in the event files under ``logdir`` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2
    out = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, ev.step, v.simple_value) for v in ev.summary.value]
    return out


def test_train_writes_event_files(tmp_path, capsys):
    spec = tmp_path / "s.fg"
    spec.write_text(SPEC, encoding="utf-8")
    d = synthetic_dataset(n_train=64, n_test=32, num_classes=4)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out), "--dataset", str(npz),
                 "--algorithm", "lg-fg-a", "--tensorboard"]) == 0
    got = scalars(out / "tensorboard")
    tags = {t for t, _, _ in got}
    assert {"error/test", "error/train", "loss/train", "lr/backbone"} <= tags, tags
    assert any(t.startswith("loss/local") for t in tags) and any(t.startswith("loss/final")
                                                                  for t in tags), tags
    tests = [(s, v) for t, s, v in got if t == "error/test"]
    assert [s for s, _ in tests] == [1, 2] and all(0 <= v <= 100 for _, v in tests)


def test_missing_package_is_one_line(tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_tbx(name, *a, **k):
        if name.startswith("tensorboardX"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tbx)
    assert main(["train", "specs/mlp.fg", "--out", str(tmp_path / "r"), "--tensorboard"]) == 1
    err = capsys.readouterr().err
    assert "pip install" in err and "tensorboardX" in err
    assert not (tmp_path / "r").exists()
