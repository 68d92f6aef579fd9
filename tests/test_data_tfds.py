"""The tensorflow-datasets path, run against ``tfds.testing.mock_data``: the arrays must
follow the offline loader's conventions, a prepared tfds folder found in the data dirs must
reach ``tfds.load(data_dir=...)``, and training must run on them. Skipped without tfds."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed: pip install '.[tfds]'"
)
pytest.importorskip("tensorflow", reason="TensorFlow, which tfds.load needs, is not installed")

from fgc.errors import DataError  # noqa: E402
from fgc.training import tfds_source  # noqa: E402
from fgc.training.data import CIFAR10_CLASSES, DATASET_STATS, load_dataset  # noqa: E402
from fgc.training.train import train  # noqa: E402

SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No data dir, ./data or tfds folder of the developer's; batches small enough that the
    mocked splits come in several."""
    monkeypatch.delenv("FGC_DATA_DIR", raising=False)
    monkeypatch.setenv("FGC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tfds_source, "BATCH", 5)


@pytest.fixture
def load_calls(monkeypatch):
    """The keyword arguments of every ``tfds.load`` call fgc makes."""
    calls, real = [], tfds.load
    monkeypatch.setattr(tfds, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    return calls


def offline(name: str, folder) -> object:
    """The same dataset through the offline loader, from a tiny file in its layout."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    if name == "mnist":
        x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
        np.savez(folder / "mnist.npz", x_train=x, y_train=np.arange(12) % 10, x_test=x,
                 y_test=np.arange(12) % 10)
    else:
        with zipfile.ZipFile(folder / "cifar10-jpeg.zip", "w") as zf:
            for split in ("train", "test"):
                for cls in CIFAR10_CLASSES:
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
                    zf.writestr(f"{split}/{cls}/0000.jpg", buf.getvalue())
    return load_dataset(name, data_dir=folder)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_mocked_tfds_gives_the_offline_conventions(name, tmp_path, load_calls):
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset(name)
    ref = offline(name, tmp_path / "offline")
    assert ds.source == "tfds" and ds.name == ref.name == name
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        x_ref, y_ref = getattr(ref, f"x_{split}"), getattr(ref, f"y_{split}")
        assert x.shape == (12, *SHAPES[name]) and x.shape[1:] == x_ref.shape[1:]
        assert x.dtype == x_ref.dtype == np.uint8 and y.dtype == y_ref.dtype == np.int32
        assert y.shape == (12,) and 0 <= y.min() and y.max() < 10
    assert (ds.mean, ds.std) == (ref.mean, ref.std) == DATASET_STATS[name]
    assert ds.num_classes == ref.num_classes == 10
    # Finite batches (12 examples come in 3), concatenated; online, so tfds may download.
    assert [(kw["batch_size"], kw["download"], kw["data_dir"]) for kw in load_calls] == [(5, True, None)]


def test_prepared_tfds_folder_is_read_without_download(tmp_path, monkeypatch, load_calls):
    folder = tmp_path / "tfds"
    (folder / "mnist" / "3.0.1").mkdir(parents=True)
    (folder / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    monkeypatch.setenv("FGC_DATA_DIR", str(folder))
    with tfds.testing.mock_data(num_examples=7):
        ds = load_dataset("mnist")
    assert ds.source == f"tfds:{folder}" and ds.x_train.shape == (7, 28, 28, 1)
    assert [(kw["data_dir"], kw["download"]) for kw in load_calls] == [(str(folder), False)]
    # In the same folder, the offline file comes first.
    offline("mnist", tmp_path / "both")
    (tmp_path / "both" / "mnist").symlink_to(folder / "mnist")
    assert load_dataset("mnist", data_dir=tmp_path / "both").source.endswith("mnist.npz")


def test_real_tfds_folder_is_read_back_exactly(tmp_path):
    # No mock: a folder that tfds itself prepared (here from arrays, under the name and
    # version of its mnist builder), read back through fgc with tfds' own mnist reader.
    store = getattr(tfds.dataset_builders, "store_as_tfds_dataset", None)
    if store is None:
        pytest.skip("this tensorflow-datasets has no store_as_tfds_dataset to prepare a folder")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = {"train": rng.integers(0, 256, (17, 28, 28, 1), dtype=np.uint8),
         "test": rng.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)}
    y = {"train": np.arange(17) % 10, "test": np.arange(6)}
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(28, 28, 1)),
                                           "label": tfds.features.ClassLabel(num_classes=10)})
    store(name="mnist", version="3.0.1", features=features, data_dir=str(tmp_path / "tfds"),
          split_datasets={k: tf.data.Dataset.from_tensor_slices({"image": x[k], "label": y[k]})
                          for k in x})
    ds = load_dataset("mnist", data_dir=tmp_path / "tfds")
    assert ds.source == f"tfds:{tmp_path / 'tfds'}" and (ds.mean, ds.std) == DATASET_STATS["mnist"]
    for split in ("train", "test"):  # tfds shuffles on writing: compare as sets of pairs
        got = sorted(zip(getattr(ds, f"y_{split}").tolist(),
                         (im.tobytes() for im in getattr(ds, f"x_{split}"))))
        assert got == sorted(zip(y[split].tolist(), (im.tobytes() for im in x[split])))
    assert ds.y_train.dtype == np.int32 and ds.x_train.shape == (17, 28, 28, 1)


def test_unreadable_tfds_folder_is_one_clear_error(tmp_path):
    (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "tfds" / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError) as e:  # real tfds: the folder holds no examples
        load_dataset("mnist", data_dir=tmp_path / "tfds")
    msg = str(e.value)
    assert f"{tmp_path / 'tfds' / 'mnist'}: cannot read this tensorflow-datasets copy" in msg
    assert "tfds.load('mnist', data_dir=" in msg and "\n" not in msg


SPEC = """
spec "tfds trainer"
input x = image({h}, {w}, {c}), classes = 10, normalize = {name}

block layer(width) {{
  out in | dense(width) | layernorm | perturb | relu
}}

head probe = linear(classes)
head readout = layernorm | linear(classes, init = zeros)

network {{
  out x | flatten | layer(8)
}}

loss local = probe on blocks
loss final = readout on output

train {{
  dataset = {name}
  batch_size = 8
  epochs = 1
  optimizer = sgd(learning_rate = 0.01)
  algorithm = lg-fg-a
}}
"""


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_training_runs_on_mocked_tfds(name, tmp_path):
    h, w, c = SHAPES[name]
    spec = tmp_path / "tiny.fg"
    spec.write_text(SPEC.format(h=h, w=w, c=c, name=name))
    steps = []
    with tfds.testing.mock_data(num_examples=16):  # one epoch of 16 = 2 steps of 8
        summary = train(spec, out=tmp_path / "run", eval_train=False, log=lambda _: None,
                        on_step=lambda epoch, step: steps.append((epoch, step)))
    assert len(steps) == 2 and summary["dataset"] == name
    assert 0 <= summary["test_error"] <= 100
