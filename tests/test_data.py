"""Tests for fgc.training.data: loading, validation, normalisation and batching."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgc.training.data import (
    CIFAR10_CLASSES,
    Dataset,
    decode_cifar_zip,
    iterate_batches,
    load_dataset,
    normalize,
    num_batches,
    synthetic_dataset,
)
from fgc.errors import DataError

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST = REAL_DATA / "mnist.npz"
CIFAR = REAL_DATA / "cifar10-jpeg.zip"
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"real MNIST not found at {MNIST}")
needs_cifar = pytest.mark.skipif(
    not CIFAR.is_file(), reason=f"real CIFAR-10 zip not found at {CIFAR}"
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may see the developer's data dir, cache or a real tfds install."""
    monkeypatch.delenv("FGC_DATA_DIR", raising=False)
    monkeypatch.setenv("FGC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)


def save_npz(path: Path, **overrides) -> Path:
    """Writes a small valid user dataset, with any array replaced or (None) dropped."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 6, 6), dtype=np.uint8),
        "y_train": rng.integers(0, 3, 20),
        "x_test": rng.integers(0, 256, (8, 6, 6), dtype=np.uint8),
        "y_test": rng.integers(0, 3, 8),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# --- synthetic data and batching ---------------------------------------------


def test_synthetic_dataset_shapes():
    ds = synthetic_dataset(n_train=100, n_test=30, image_shape=(8, 8, 3), num_classes=5)
    assert ds.x_train.shape == (100, 8, 8, 3) and ds.x_test.shape == (30, 8, 8, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.image_shape == (8, 8, 3) and ds.num_classes == 5
    assert set(ds.y_train.tolist()) == set(range(5))
    assert len(ds.mean) == len(ds.std) == 3
    # Reproducible from the seed.
    again = synthetic_dataset(n_train=100, n_test=30, image_shape=(8, 8, 3), num_classes=5)
    np.testing.assert_array_equal(ds.x_train, again.x_train)


def test_synthetic_dataset_is_learnable():
    # Nearest class mean on train data should classify test data well above chance.
    ds = synthetic_dataset()
    x_tr = ds.x_train.reshape(len(ds.x_train), -1).astype(float)
    centers = np.stack([x_tr[ds.y_train == c].mean(0) for c in range(ds.num_classes)])
    x_te = ds.x_test.reshape(len(ds.x_test), -1).astype(float)
    pred = np.argmin(((x_te[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    assert (pred == ds.y_test).mean() > 0.9


def test_normalize():
    x = np.array([[[[0, 255]]]], np.uint8)  # one 1x1 image, two channels
    out = normalize(x, (0.5, 0.0), (0.5, 2.0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 0.5])
    np.testing.assert_allclose(normalize(np.float32([1.0]), (0.5,), (0.25,)), [2.0])


def batches(x, **kw):
    y = np.arange(len(x))
    return list(iterate_batches(x, y, **kw))


def test_iterate_batches_deterministic_per_seed_and_epoch():
    x = np.arange(100)[:, None]
    kw = dict(batch_size=16, shuffle=True, drop_last=False)
    a = batches(x, seed=1, epoch=3, **kw)
    b = batches(x, seed=1, epoch=3, **kw)
    c = batches(x, seed=1, epoch=4, **kw)
    ys = lambda bs: np.concatenate([y for _, y in bs])  # noqa: E731
    np.testing.assert_array_equal(ys(a), ys(b))
    assert not np.array_equal(ys(a), ys(c))
    assert sorted(ys(a).tolist()) == list(range(100))  # a permutation: every example once
    for xb, yb in a:
        np.testing.assert_array_equal(xb[:, 0], yb)  # inputs stay paired with labels
    assert [len(y) for _, y in a] == [16] * 6 + [4]


def test_iterate_batches_unshuffled_and_drop_last():
    x = np.arange(10)[:, None]
    out = batches(x, batch_size=4, seed=0, epoch=0, shuffle=False, drop_last=True)
    assert [y.tolist() for _, y in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert num_batches(10, 4, drop_last=True) == 2 and num_batches(10, 4, drop_last=False) == 3
    assert num_batches(8, 4, drop_last=False) == 2


def test_iterate_batches_flips_are_random_per_image_and_deterministic():
    x = np.arange(64 * 2 * 3, dtype=np.uint8).reshape(64, 2, 3, 1)
    kw = dict(batch_size=64, seed=7, epoch=0, shuffle=False, drop_last=False, flip=True)
    (xb, _), = batches(x, **kw)
    flipped = np.array([np.array_equal(xb[i], x[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(xb[i], x[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54
    (again, _), = batches(x, **kw)
    np.testing.assert_array_equal(xb, again)
    (other, _), = batches(x, **{**kw, "epoch": 1})
    assert not np.array_equal(xb, other)
    assert x[0, 0, 0, 0] == 0  # the caller's array is never modified


def test_flip_needs_images():
    with pytest.raises(DataError, match="flip"):
        kw = dict(batch_size=2, seed=0, epoch=0, shuffle=False, drop_last=False, flip=True)
        batches(np.zeros((4, 3)), **kw)


# --- user .npz files ------------------------------------------------------------


def test_user_npz_round_trip(tmp_path):
    path = save_npz(tmp_path / "toy.npz")
    ds = load_dataset(str(path))
    assert isinstance(ds, Dataset) and ds.name == "toy" and ds.source == str(path)
    assert ds.x_train.shape == (20, 6, 6, 1) and ds.image_shape == (6, 6, 1)
    assert ds.y_train.dtype == np.int32 and ds.num_classes == 3
    with np.load(path) as raw:
        np.testing.assert_array_equal(ds.x_train[..., 0], raw["x_train"])
        np.testing.assert_allclose(ds.mean[0], raw["x_train"].mean() / 255, rtol=1e-6)
        np.testing.assert_allclose(ds.std[0], raw["x_train"].std() / 255, rtol=1e-6)


def test_user_npz_features_and_given_constants(tmp_path):
    rng = np.random.default_rng(1)
    path = save_npz(
        tmp_path / "feat.npz",
        x_train=rng.random((20, 5), np.float32),
        x_test=rng.random((8, 5), np.float32),
        mean=np.full(5, 0.5),
        std=np.array([0.25]),
        num_classes=np.array(7),
    )
    ds = load_dataset(path)
    assert ds.image_shape == (5,) and ds.x_train.dtype == np.float32
    assert ds.num_classes == 7 and ds.mean == (0.5,) * 5 and ds.std == (0.25,) * 5


def test_truncated_npz(tmp_path):
    good = save_npz(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        load_dataset(bad)
    msg = str(e.value)
    assert str(bad) in msg and "truncated" in msg and "numpy.savez" in msg


def test_not_a_zip(tmp_path):
    bad = tmp_path / "text.npz"
    bad.write_text("hello, I am not an archive")
    with pytest.raises(DataError, match="cannot be read as an .npz archive"):
        load_dataset(bad)
    with pytest.raises(DataError, match="not a zip"):
        decode_cifar_zip(bad)


def test_missing_key(tmp_path):
    path = save_npz(tmp_path / "nokey.npz", y_test=None)
    with pytest.raises(DataError) as e:
        load_dataset(path)
    assert "missing key(s) y_test" in str(e.value) and "x_train" in str(e.value)


def test_label_count_mismatch(tmp_path):
    path = save_npz(tmp_path / "short.npz", y_train=np.zeros(19, int))
    with pytest.raises(DataError, match="x_train has 20 examples but y_train has 19 labels"):
        load_dataset(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"x_train": np.zeros((20, 6, 6), np.int64)}, "store images as uint8"),
        ({"x_train": np.zeros((20,), np.uint8)}, "expected images"),
        ({"x_test": np.zeros((8, 5, 5), np.uint8)}, "same example shape"),
        ({"y_train": np.full(20, 0.5)}, "integer array"),
        ({"y_train": np.full(20, -1)}, "labels range over -1"),
        ({"x_train": np.full((20, 6, 6), np.nan, np.float32)}, "NaN"),
    ],
)
def test_ill_shaped_npz(tmp_path, override, message):
    with pytest.raises(DataError, match=message):
        load_dataset(save_npz(tmp_path / "bad.npz", **override))


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "absent.npz")


# --- built-in datasets ------------------------------------------------------------


def test_missing_builtin_lists_every_place_looked(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv("FGC_DATA_DIR", str(env_dir))
    monkeypatch.chdir(tmp_path)  # no ./data here, whatever the checkout holds
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "mnist.npz") in msg and "folder does not exist" in msg
    assert str(env_dir / "mnist.npz") in msg and "no such file" in msg
    assert "tensorflow-datasets: not importable" in msg
    assert "--data-dir" in msg and "FGC_DATA_DIR" in msg and "install tensorflow-datasets" in msg


def test_tfds_folder_without_tfds_is_listed_not_fatal(tmp_path, monkeypatch):
    (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "tfds" / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", data_dir=tmp_path / "tfds")
    msg = str(e.value)
    assert f"{tmp_path / 'tfds' / 'mnist'} is a tensorflow-datasets copy, but " in msg
    assert "tensorflow-datasets is not importable" in msg and "./data" in msg


def test_importing_fgc_does_not_import_tensorflow():
    code = ("import sys, fgc, fgc.training.data, fgc.training.train, fgc.tools.cli\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', "
            "'tensorflow_datasets'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_mnist_from_env_dir_validates_shape(tmp_path, monkeypatch):
    save_npz(tmp_path / "mnist.npz")  # valid npz, but 6x6 images are not MNIST
    monkeypatch.setenv("FGC_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"mnist images should be uint8 of shape \(28, 28, 1\)"):
        load_dataset("mnist")


def make_cifar_zip(path: Path, prefix: str, per_class: int) -> Path:
    """Builds a tiny CIFAR-style zip of flat images whose grey level encodes the class."""
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for c, cls in enumerate(CIFAR10_CLASSES):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((32, 32, 3), c * 25, np.uint8)).save(buf, "JPEG")
                    zf.writestr(f"{prefix}{split}/{cls}/{i:04d}.jpg", buf.getvalue())
    return path


@pytest.mark.parametrize("prefix", ["", "cifar10/"])
def test_cifar_zip_decode_and_cache(tmp_path, monkeypatch, prefix):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_cifar_zip(data_dir / "cifar10-jpeg.zip", prefix, per_class=2)
    ds = load_dataset("cifar10", data_dir=data_dir)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    assert ds.y_train.tolist() == [c for c in range(10) for _ in range(2)]
    assert abs(int(ds.x_train[-1].mean()) - 9 * 25) <= 2  # truck images decoded as truck
    assert ds.mean == (0.4914, 0.4822, 0.4465)
    caches = list((tmp_path / "cache").glob("cifar10-*.npz"))
    assert len(caches) == 1 and sorted(p.name for p in data_dir.iterdir()) == ["cifar10-jpeg.zip"]
    # The second load must come from the cache, not the zip.
    monkeypatch.setattr("fgc.training.cifar_zip.decode_cifar_zip",
                        lambda path: pytest.fail("decoded again"))
    np.testing.assert_array_equal(load_dataset("cifar10", data_dir=data_dir).x_train, ds.x_train)


def test_cifar_zip_bad_layout_and_bad_image(tmp_path):
    bad_class = tmp_path / "a.zip"
    with zipfile.ZipFile(bad_class, "w") as zf:
        zf.writestr("train/unicorn/0000.jpg", b"")
    with pytest.raises(DataError, match="unexpected entry 'train/unicorn/0000.jpg'"):
        decode_cifar_zip(bad_class)
    bad_image = tmp_path / "b.zip"
    with zipfile.ZipFile(bad_image, "w") as zf:
        zf.writestr("train/cat/0000.jpg", b"not a jpeg")
        zf.writestr("test/cat/0000.jpg", b"not a jpeg")
    with pytest.raises(DataError, match=r"'train/cat/0000.jpg' is not a readable image \(unknown"):
        decode_cifar_zip(bad_image)


@needs_cifar
def test_cifar_zip_decodes_real_jpegs(tmp_path):
    # A few real images copied into a small zip keep this fast; the full set is slow below.
    with zipfile.ZipFile(CIFAR) as src, zipfile.ZipFile(tmp_path / "small.zip", "w") as dst:
        names = [n for n in src.namelist() if n.endswith(("/0000.jpg", "/0001.jpg"))]
        for n in names:
            dst.writestr("prefix/" + n, src.read(n))
    arrays = decode_cifar_zip(tmp_path / "small.zip")
    assert arrays["x_train"].shape == (20, 32, 32, 3) and arrays["x_train"].dtype == np.uint8
    assert arrays["y_test"].tolist() == [c for c in range(10) for _ in range(2)]
    assert arrays["x_train"].std() > 10  # real pictures, not blank


@needs_mnist
def test_real_mnist():
    ds = load_dataset("mnist", data_dir=REAL_DATA)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9 and ds.num_classes == 10
    assert ds.mean == (0.1307,) and ds.source == str(MNIST)


@needs_cifar
def test_real_cifar10():
    # Full decode of 60k JPEGs (about 8 s on 2 cores) into a fresh cache.
    ds = load_dataset("cifar10", data_dir=REAL_DATA)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.image_shape == (32, 32, 3)
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


def test_prefetch_to_device_keeps_the_batches_their_order_and_uint8():
    """Double buffering changes where a batch is when, never which batch or its dtype:
    uint8 images go to the device as uint8 (the network normalises them there)."""
    import jax

    from fgc.training.data import prefetch_to_device
    x = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    y = np.arange(10, dtype=np.int32)
    want = list(iterate_batches(x, y, 3, seed=1, epoch=2, shuffle=True, drop_last=True))
    pulled = []

    def source():
        for b in iterate_batches(x, y, 3, seed=1, epoch=2, shuffle=True, drop_last=True):
            pulled.append(b)
            yield b

    for size in (1, 2, 3):
        pulled.clear()
        it = prefetch_to_device(source(), size)
        first = next(it)
        assert len(pulled) == min(size, len(want))  # ahead by size - 1, no more
        got = [first, *it]
        assert len(got) == len(want)
        for (gx, gy), (wx, wy) in zip(got, want):
            assert isinstance(gx, jax.Array) and gx.dtype == np.uint8 and gy.dtype == np.int32
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetch_to_device(iter(want), 0))
