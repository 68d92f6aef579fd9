"""The built-in datasets through tensorflow-datasets (tfds), imported only when used.

fgc works without tfds; with it (``pip install 'fgc[tfds]'``) there are two ways in:

- **A prepared tfds folder.** A data folder holding ``NAME/VERSION/dataset_info.json`` (the
  layout ``tfds.load(NAME, data_dir=FOLDER)`` writes, e.g. ``~/tensorflow_datasets/mnist/3.0.1``)
  is read with ``download=False``: nothing is fetched.
- **Online.** Last in the search order, tfds's own folder (``$TFDS_DATA_DIR``, else
  ``~/tensorflow_datasets``) is used, downloading and preparing the dataset the first time
  (tfds shows its own progress bars for that).

Examples are read in finite batches and concatenated: ``tfds.load(..., batch_size=-1)``
aborts the whole process inside TensorFlow under ``tfds.testing.mock_data``
(``std::length_error``). The arrays are the raw ones (uint8 ``[N, H, W, C]`` images,
int64 labels); :mod:`fgc.training.data` validates them like the offline files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

BATCH = 4096
"""Examples per batch read from tfds: large enough to be fast, small enough to bound memory."""
DOWNLOAD_RETRIES = 3
"""tfds retries a failed request 10 times with exponential backoff, so an offline machine
waits about 3.5 minutes for its answer; 3 retries answer in seconds and still ride out a
transient server error."""


class TfdsUnavailable(Exception):
    """tfds could not give the dataset; the message says why, for the list of places looked."""


class TfdsMissing(TfdsUnavailable):
    """tensorflow-datasets (or TensorFlow under it) is not importable."""


def holds_copy(folder: str | os.PathLike, name: str) -> bool:
    """Whether ``folder`` holds a prepared tfds copy of ``name`` (``NAME/VERSION/dataset_info.json``)."""
    root = Path(folder).expanduser() / name
    return root.is_dir() and any(root.glob("*/dataset_info.json"))


def default_dir() -> str:
    """The folder tfds downloads into when it is given none."""
    return os.environ.get("TFDS_DATA_DIR") or str(Path("~") / "tensorflow_datasets")


def load_arrays(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Loads both splits of ``name`` through tfds.

    Args:
      name: a tfds dataset name (``mnist``, ``cifar10``).
      data_dir: a prepared tfds folder, read without downloading; ``None`` for tfds's own
        folder, downloading and preparing the dataset there when it is not yet.

    Returns:
      ``x_train, y_train, x_test, y_test`` as numpy arrays.

    Raises:
      TfdsMissing: tensorflow-datasets is not importable.
      TfdsUnavailable: tfds failed (not prepared, no network, a damaged file, ...).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        import tensorflow_datasets as tfds
        import tensorflow as tf  # tfds imports it lazily; its absence should show here
    except Exception as e:  # a broken TF install can raise more than ImportError
        raise TfdsMissing(f"not importable ({_why(e)})") from None
    where = str(data_dir) if data_dir is not None else default_dir()
    try:
        _hide_gpus(tf)
        with _fewer_retries():
            splits, info = tfds.load(
                name, split=["train", "test"], data_dir=None if data_dir is None else str(data_dir),
                download=data_dir is None, batch_size=BATCH, as_supervised=True, with_info=True,
            )
        arrays = {}
        for split, ds in zip(("train", "test"), splits):
            total = info.splits[split].num_examples if split in info.splits else None
            x, y = _concatenate(tfds.as_numpy(ds), f"{name} {split}", total)
            arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    except TfdsUnavailable:
        raise
    except Exception as e:  # download, checksum and TF errors have no common base
        if data_dir is not None:
            raise TfdsUnavailable(f"reading {where} failed ({_why(e)})") from None
        # requests' ConnectionError is not the builtin one; both have this name.
        offline = (" (is this machine offline?)"
                   if any(c.__name__ == "ConnectionError" for c in type(e).__mro__) else "")
        raise TfdsUnavailable(f"download or preparation into {where} failed{offline} "
                              f"({_why(e)})") from None
    return arrays


def _concatenate(batches: Iterator, what: str, total: int | None) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    bar = tqdm(total=total, desc=f"reading {what} from tensorflow-datasets", unit="img",
               disable=not sys.stderr.isatty())
    with bar:
        for x, y in batches:
            xs.append(x)
            ys.append(y)
            bar.update(len(y))
    if not xs:
        raise TfdsUnavailable(f"the {what} split is empty")
    return np.concatenate(xs), np.concatenate(ys)


def _hide_gpus(tf) -> None:
    """A GPU TensorFlow would otherwise reserve the accelerator's memory that JAX needs."""
    with contextlib.suppress(RuntimeError, ValueError):  # already initialised: leave it
        tf.config.set_visible_devices([], "GPU")


@contextlib.contextmanager
def _fewer_retries():
    try:
        from tensorflow_datasets.core.download import downloader
    except ImportError:
        downloader = None
    saved = getattr(downloader, "MAX_RETRIES", None)
    if saved is None:  # another tfds layout: keep its own retries
        yield
        return
    downloader.MAX_RETRIES = min(saved, DOWNLOAD_RETRIES)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved


def _why(e: BaseException) -> str:
    """One line naming the exception: tfds and requests messages run to many lines."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
