"""Datasets for training: loading, validation, normalisation and batching.

``load_dataset`` knows two built-in datasets, ``mnist`` and ``cifar10``, and any
user ``.npz`` file. Built-ins are looked for, in order, in the ``data_dir``
argument (``--data-dir``), in ``$FGC_DATA_DIR``, in ``./data`` (relative to the
working directory) and last through tensorflow-datasets online
(:mod:`fgc.training.tfds_source`, imported lazily: fgc works without it).
In each of those folders fgc takes, first, the offline file: ``mnist.npz`` (the
Keras layout) or ``cifar10-jpeg.zip`` (``train/CLASS/NNNN.jpg`` and
``test/CLASS/NNNN.jpg``, decoded once by :mod:`fgc.training.cifar_zip` and cached
under ``$FGC_CACHE_DIR``, never in the user's data dir); else a copy prepared by
tensorflow-datasets (``mnist/3.0.1/...``, as ``tfds.load(data_dir=FOLDER)`` writes it),
which is read without downloading.

Every problem with the data is raised as :class:`~fgc.errors.DataError` naming
the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fgc.errors import DataError, plural
from fgc.training import tfds_source
from fgc.training.cifar_zip import CIFAR10_CLASSES, READ_ERRORS, cifar_arrays, decode_cifar_zip
from fgc.training.cifar_zip import SPLITS as _SPLITS

__all__ = ["BUILTIN_DATASETS", "CIFAR10_CLASSES", "DATASET_STATS", "Dataset", "decode_cifar_zip",
           "iterate_batches", "load_dataset", "normalize", "num_batches", "prefetch_to_device",
           "synthetic_dataset"]

DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # The usual torchvision constants, as the released ImageNet pipeline uses.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Per-channel (mean, std) on the [0, 1] scale, as used by the reference code, for every
name a spec's ``normalize =`` may give (besides ``none``)."""
_BUILTIN_STATS = DATASET_STATS  # the old private name; fgc.lowering.lower still imports it
_BUILTIN_FILES = {"mnist": "mnist.npz", "cifar10": "cifar10-jpeg.zip"}
BUILTIN_DATASETS: tuple[str, ...] = tuple(_BUILTIN_FILES)
"""The datasets ``load_dataset`` knows by name; anything else is a path to an ``.npz``."""
_BUILTIN_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays has no truth value
class Dataset:
    """A train/test split held in memory.

    Attributes:
      name: ``mnist``, ``cifar10``, a user file's stem, or ``synthetic``.
      x_train: uint8 (0..255) or float32 inputs, ``[N, H, W, C]`` for images
        (channels last) or ``[N, D]`` for feature vectors.
      y_train: int32 labels ``[N]`` in ``0 .. num_classes - 1``.
      x_test: as ``x_train``.
      y_test: as ``y_train``.
      num_classes: number of classes.
      mean: per-channel (last axis) mean on the [0, 1] scale.
      std: per-channel standard deviation on the [0, 1] scale.
      source: where the data came from (a file path, ``tfds``, ...).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(H, W, C)`` for images, ``(D,)`` for features."""
        return tuple(self.x_train.shape[1:])


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads a built-in dataset or a user ``.npz`` file.

    Args:
      name: ``mnist``, ``cifar10``, or a path to an ``.npz`` file with keys
        ``x_train, y_train, x_test, y_test`` and optionally ``mean``, ``std``,
        ``num_classes``.
      data_dir: folder holding ``mnist.npz`` / ``cifar10-jpeg.zip``; searched
        before ``$FGC_DATA_DIR`` and tensorflow-datasets.

    Returns:
      The validated dataset.

    Raises:
      DataError: the dataset cannot be found, or is corrupt or ill-shaped.
    """
    key = str(name).lower()
    if key in _BUILTIN_FILES:
        return _load_builtin(key, data_dir)
    path = Path(name).expanduser()
    if path.suffix.lower() != ".npz" and not path.exists():
        raise DataError(
            f"unknown dataset {name!r}: expected 'mnist', 'cifar10' or a path to an .npz file "
            f"with keys {', '.join(_SPLITS)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path to your .npz dataset")
    return _load_user_npz(path)


def _load_builtin(name: str, data_dir: str | os.PathLike | None) -> Dataset:
    """Searches data_dir, $FGC_DATA_DIR, ./data, then tfds online; one error lists every
    place looked."""
    filename = _BUILTIN_FILES[name]
    tried = []
    env_dir = os.environ.get("FGC_DATA_DIR")
    places = (("data_dir argument (--data-dir)", data_dir), ("$FGC_DATA_DIR", env_dir),
              ("./data", "data"))
    for label, folder in places:
        if not folder:
            tried.append(f"{label}: not set")
            continue
        root = Path(folder).expanduser()
        path = root / filename
        # A file that is present but broken raises rather than falling through:
        # silently using another copy would hide the user's mistake.
        if path.is_file():
            arrays = cifar_arrays(path) if name == "cifar10" else _read_npz(path, _SPLITS)
            return _builtin_dataset(name, arrays, str(path))
        if tfds_source.holds_copy(root, name):
            try:
                return _builtin_dataset(name, tfds_source.load_arrays(name, root), f"tfds:{root}")
            except tfds_source.TfdsMissing as e:
                tried.append(f"{label}: {root / name} is a tensorflow-datasets copy, but "
                             f"tensorflow-datasets is {e}")
                continue
            except tfds_source.TfdsUnavailable as e:
                raise DataError(
                    f"{root / name}: cannot read this tensorflow-datasets copy of {name}: {e}; "
                    f"prepare it again with tfds.load({name!r}, data_dir={str(root)!r}) "
                    f"or remove it"
                ) from None
        why = (f"no such file, nor a tensorflow-datasets {name}/ folder" if root.is_dir()
               else "folder does not exist")
        tried.append(f"{label}: {path} ({why})")
    try:
        return _builtin_dataset(name, tfds_source.load_arrays(name), "tfds")
    except tfds_source.TfdsUnavailable as e:
        tried.append(f"tensorflow-datasets: {e}")
    raise DataError(
        f"cannot find dataset {name!r}. Looked in:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + f"To provide it, copy {filename} (or a folder prepared by tensorflow-datasets, "
        f"holding {name}/VERSION/) into a folder and pass --data-dir DIR or set "
        f"FGC_DATA_DIR=DIR, or install tensorflow-datasets (pip install 'fgc[tfds]') "
        f"and run with network access."
    )


def _builtin_dataset(name: str, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    """Validates a built-in's arrays against its known shape and constants."""
    mean, std = DATASET_STATS[name]
    ds = _make_dataset(name, arrays, source, num_classes=10, mean=mean, std=std)
    if ds.image_shape != _BUILTIN_SHAPES[name] or ds.x_train.dtype != np.uint8:
        raise DataError(
            f"{source}: {name} images should be uint8 of shape {_BUILTIN_SHAPES[name]}, got "
            f"{ds.x_train.dtype} {ds.image_shape}; replace it with the original {name} data"
        )
    return ds


def _load_user_npz(path: Path) -> Dataset:
    arrays = _read_npz(path, _SPLITS, optional=("mean", "std", "num_classes"))
    try:
        num_classes = int(arrays["num_classes"]) if "num_classes" in arrays else None
        mean, std = (
            tuple(float(v) for v in np.ravel(arrays[k])) if k in arrays else None
            for k in ("mean", "std")
        )
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: bad num_classes/mean/std ({e}); store them as numbers") from None
    return _make_dataset(path.stem, arrays, str(path), num_classes=num_classes, mean=mean, std=std)


def _read_npz(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Reads the named arrays eagerly so that damage anywhere in the file surfaces here."""
    fix = (
        "re-download it, or re-create it with numpy.savez(path, "
        + ", ".join(f"{k}=..." for k in _SPLITS)
        + ")"
    )
    try:
        # Our own handle: numpy leaks the one it opens when the archive is damaged.
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not hasattr(npz, "files"):  # np.load returns a bare array for .npy files
                raise DataError(f"{path}: is a single .npy array, not an .npz archive; {fix}")
            with npz:
                missing = [k for k in required if k not in npz.files]
                if missing:
                    raise DataError(
                        f"{path}: missing key(s) {', '.join(missing)} (found: "
                        f"{', '.join(npz.files) or 'none'}); {fix}"
                    )
                return {k: npz[k] for k in (*required, *optional) if k in npz.files}
    except READ_ERRORS as e:
        raise DataError(
            f"{path}: cannot be read as an .npz archive of plain arrays ({e}); "
            f"the file may be truncated or hold pickled objects; {fix}"
        ) from None


def _make_dataset(
    name: str,
    arrays: dict[str, np.ndarray],
    source: str,
    num_classes: int | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> Dataset:
    """Checks shapes, dtypes and labels; adds a channel axis; fills missing constants.

    Raises:
      DataError: anything is inconsistent, with the source named.
    """
    xs = {k: _check_inputs(source, k, arrays[k]) for k in ("x_train", "x_test")}
    ys = {}
    for split in ("train", "test"):
        x, y = xs[f"x_{split}"], np.asarray(arrays[f"y_{split}"])
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{source}: y_{split} should be a 1-D integer array of class indices, got "
                f"{y.dtype} of shape {y.shape}; convert one-hot labels with argmax(axis=1)"
            )
        if len(y) != len(x):
            raise DataError(
                f"{source}: x_{split} has {plural(len(x), 'example')} but y_{split} has "
                f"{plural(len(y), 'label')}; "
                f"they must have one label per example"
            )
        if len(y) == 0:
            raise DataError(f"{source}: the {split} split is empty")
        ys[split] = y.astype(np.int32)
    if xs["x_train"].shape[1:] != xs["x_test"].shape[1:]:
        raise DataError(
            f"{source}: train examples have shape {xs['x_train'].shape[1:]} but test examples "
            f"{xs['x_test'].shape[1:]}; both splits must have the same example shape"
        )
    labels = np.concatenate([ys["train"], ys["test"]])
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{source}: labels range over {labels.min()}..{labels.max()} but should lie in "
            f"0..{num_classes - 1} ({plural(num_classes, 'class', 'classes')})"
        )
    channels = xs["x_train"].shape[-1]
    if mean is None or std is None:
        computed = _channel_stats(xs["x_train"])
        mean = computed[0] if mean is None else mean
        std = computed[1] if std is None else std
    mean, std = (_per_channel(source, k, v, channels) for k, v in (("mean", mean), ("std", std)))
    if min(std) <= 0:
        raise DataError(f"{source}: std must be positive, got {std}")
    return Dataset(
        name, xs["x_train"], ys["train"], xs["x_test"], ys["test"], num_classes, mean, std, source
    )


def _check_inputs(source: str, key: str, x: np.ndarray) -> np.ndarray:
    """Returns x as uint8 or float32 with a channel axis on [N, H, W] images."""
    x = np.asarray(x)
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{source}: {key} has shape {x.shape}; expected images [N, H, W] or [N, H, W, C] "
            f"(channels last) or feature vectors [N, D]"
        )
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise DataError(f"{source}: {key} contains NaN or Inf values")
    elif x.dtype != np.uint8:
        raise DataError(
            f"{source}: {key} has dtype {x.dtype}; store images as uint8 (0..255) or float32 (0..1)"
        )
    return x[..., None] if x.ndim == 3 else x


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per last-axis mean and std on the [0, 1] scale, in float64 chunks to bound memory."""
    flat = x.reshape(-1, x.shape[-1])
    total, total_sq = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
    for start in range(0, len(flat), 1 << 20):
        chunk = flat[start : start + (1 << 20)].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    mean = total / len(flat)
    std = np.sqrt(np.maximum(total_sq / len(flat) - mean**2, 0.0))
    # A constant channel (e.g. an always-black border feature) would divide by zero.
    std = np.where(std > 1e-12, std, scale)
    return tuple((mean / scale).tolist()), tuple((std / scale).tolist())


def _per_channel(
    source: str, what: str, values: tuple[float, ...], channels: int
) -> tuple[float, ...]:
    """Broadcasts a single value to every channel; otherwise requires one per channel."""
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise DataError(
            f"{source}: {what} has {plural(len(values), 'value')} but the data has "
            f"{plural(channels, 'channel')}"
        )
    return tuple(values)


def normalize(x, mean: tuple[float, ...], std: tuple[float, ...]):
    """Scales inputs to float32 ``(x / 255 - mean) / std`` per channel (last axis).

    Args:
      x: numpy or jax array; uint8 is taken as 0..255, floats as already on [0, 1].
      mean: per-channel means on the [0, 1] scale.
      std: per-channel standard deviations on the [0, 1] scale.

    Returns:
      A float32 array of the same kind and shape as ``x``.
    """
    scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    per_channel = (1,) * (x.ndim - 1) + (-1,)  # explicit: no implicit rank promotion
    return ((scaled - np.asarray(mean, np.float32).reshape(per_channel))
            / np.asarray(std, np.float32).reshape(per_channel))


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches ``iterate_batches`` yields for ``n`` examples."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    drop_last: bool,
    flip: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(x, y)`` numpy batches for one epoch.

    The order and the flips depend only on ``(seed, epoch)``, so a run resumed
    at epoch ``e`` sees exactly the batches the original run would have.

    Args:
      x: inputs ``[N, ...]``.
      y: labels ``[N]``.
      batch_size: examples per batch.
      seed: non-negative run seed.
      epoch: non-negative epoch index.
      shuffle: visit examples in a random order (else in stored order).
      drop_last: skip a final batch smaller than ``batch_size``.
      flip: mirror each image left-right with probability 1/2 (needs ``[N, H, W, C]``).

    Yields:
      Copies of the selected examples; callers may modify them.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if flip and x.ndim != 4:
        raise DataError(f"horizontal flips need images [N, H, W, C], got inputs of shape {x.shape}")
    n = len(x)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    flips = rng.random(n) < 0.5 if flip else None
    for b in range(num_batches(n, batch_size, drop_last)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        xb = x[idx]  # fancy indexing copies, so flipping in place is safe
        if flips is not None:
            f = flips[b * batch_size : (b + 1) * batch_size]
            xb[f] = xb[f, :, ::-1]
        yield xb, y[idx]


def prefetch_to_device(batches: Iterable[tuple[np.ndarray, np.ndarray]], size: int = 2,
                       device=None) -> Iterator[tuple]:
    """The batches of ``batches``, each already on the device, ``size - 1`` ahead of the one
    the caller is using (double buffering for ``size = 2``).

    A batch is assembled (the numpy indexing of :func:`iterate_batches`) and copied to the
    device (``jax.device_put``, which returns at once) while the caller's step on the batch
    before it runs: a plain ``jax.jit`` step (the run loop's
    :class:`~fgc.training.flat_step.FlatStep`) is dispatched asynchronously, so host work
    and the copy overlap it (``eqx.filter_jit`` waits for each call, so under it they do not). The batches and their order are those of ``batches``; the arrays keep their
    dtype (uint8 images travel as uint8 and the network normalises them on the device).

    Args:
      batches: an iterator of ``(x, y)`` numpy batches.
      size: batches on the device at once, at least 1 (1: no look-ahead).
      device: where to put them (default: JAX's default device).
    """
    import collections

    import jax
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    it = iter(batches)
    ready: collections.deque = collections.deque()

    def put_next() -> None:
        for batch in itertools.islice(it, 1):
            ready.append(jax.device_put(batch, device))

    for _ in range(size):
        put_next()
    while ready:
        yield ready.popleft()
        put_next()  # while the caller's step on the batch just yielded runs


def synthetic_dataset(
    name: str = "synthetic",
    n_train: int = 512,
    n_test: int = 128,
    image_shape: tuple[int, ...] = (8, 8, 1),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """A small learnable problem: a random uint8 prototype per class plus noise.

    Args:
      name: dataset name.
      n_train: training examples.
      n_test: test examples.
      image_shape: shape of one example, e.g. ``(H, W, C)`` or ``(D,)``.
      num_classes: number of classes (balanced).
      seed: makes the data reproducible.

    Returns:
      The dataset, with mean/std computed from its training inputs.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(32, 224, (num_classes, *image_shape))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        x = prototypes[y] + rng.normal(0, 40, (n, *image_shape))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y

    (x_tr, y_tr), (x_te, y_te) = split(n_train), split(n_test)
    mean, std = _channel_stats(x_tr)
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes, mean, std, f"synthetic(seed={seed})")
