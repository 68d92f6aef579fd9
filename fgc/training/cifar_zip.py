"""CIFAR-10 from a zip of JPEGs: decoding, and a cache of the decoded arrays.

The zip holds ``[PREFIX/]train/CLASS/NNNN.jpg`` and ``[PREFIX/]test/CLASS/NNNN.jpg``;
decoding 60,000 JPEGs takes seconds, so the arrays are cached under
``$FGC_CACHE_DIR`` (default ``~/.cache/fgc``), never in the user's data dir.
:mod:`fgc.training.data` turns the arrays into a validated :class:`~fgc.training.data.Dataset`.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fgc.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

SPLITS = ("x_train", "y_train", "x_test", "y_test")
# Bump when the cache layout changes so stale caches are ignored, not misread.
_CACHE_VERSION = 1
# What reading a damaged archive or image can raise; all become DataError.
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _cache_dir() -> Path:
    return Path(os.environ.get("FGC_CACHE_DIR") or Path.home() / ".cache" / "fgc").expanduser()


def cifar_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a CIFAR-10 zip of JPEGs, decoded once and then read from the cache.

    The cache is keyed by the zip's size and mtime, so replacing the zip
    invalidates it; a damaged cache is silently rebuilt because it is ours.
    """
    stat = path.stat()
    cache = _cache_dir() / f"cifar10-v{_CACHE_VERSION}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    arrays = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in SPLITS}
        except (*READ_ERRORS, KeyError):
            arrays = None
    if arrays is None:
        arrays = decode_cifar_zip(path)
        _write_cache(cache, arrays)
    return arrays


def _write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes atomically (temp file + rename) so a killed run never leaves a half cache."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # uncompressed: JPEG-noisy pixels barely compress
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        # An unwritable cache only costs time on the next run; training can go on.
        print(f"fgc: warning: could not cache decoded CIFAR-10 at {cache}: {e}", file=sys.stderr)


def decode_cifar_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Decodes a zip of ``[PREFIX/]SPLIT/CLASS/NAME.jpg`` images into arrays.

    Files are sorted by (class index, name) within each split for determinism.
    Decoding is serial: for 32x32 JPEGs, per-image overhead dominates and a thread
    pool measured slower on 2 cores.

    Args:
      path: the zip file.

    Returns:
      ``x_train, y_train, x_test, y_test``: uint8 ``[N, H, W, 3]`` and int32 ``[N]``.

    Raises:
      DataError: the zip is unreadable, laid out differently, or holds a bad image.
    """
    path = Path(path)
    layout = "SPLIT/CLASS/NAME.jpg, SPLIT train or test, CLASS one of " + ", ".join(CIFAR10_CLASSES)
    try:
        with zipfile.ZipFile(path) as zf:
            entries: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
            for name in zf.namelist():
                parts = name.split("/")
                if name.endswith("/") or "__MACOSX" in parts or parts[-1].startswith("."):
                    continue
                if not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                    continue
                if len(parts) < 3 or parts[-3] not in entries or parts[-2] not in CIFAR10_CLASSES:
                    raise DataError(f"{path}: unexpected entry {name!r}; expected {layout}")
                entries[parts[-3]].append((CIFAR10_CLASSES.index(parts[-2]), name))
            arrays = {}
            for split, items in entries.items():
                if not items:
                    raise DataError(f"{path}: no {split} images found; expected {layout}")
                items.sort()
                arrays[f"x_{split}"] = _decode_images(path, zf, [n for _, n in items], split)
                arrays[f"y_{split}"] = np.array([c for c, _ in items], np.int32)
            return arrays
    except READ_ERRORS as e:
        raise DataError(
            f"{path}: cannot be read as a zip of JPEGs ({e}); the file may be truncated "
            f"or not a zip; replace it with a fresh copy of cifar10-jpeg.zip"
        ) from None


def _decode_images(path: Path, zf: zipfile.ZipFile, names: list[str], split: str) -> np.ndarray:
    """Decodes every image into one preallocated array (first image fixes the shape)."""
    out = None
    desc = f"decoding {path.name} ({split})"
    for i, name in enumerate(tqdm(names, desc, unit="img", disable=not sys.stderr.isatty())):
        try:
            with Image.open(io.BytesIO(zf.read(name))) as im:
                pixels = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        except READ_ERRORS as e:
            # PIL's "cannot identify" message only names an anonymous BytesIO.
            why = "unknown image format" if isinstance(e, UnidentifiedImageError) else str(e)
            raise DataError(
                f"{path}: entry {name!r} is not a readable image ({why}); replace the zip"
            ) from None
        if out is None:
            out = np.empty((len(names), *pixels.shape), np.uint8)
        if pixels.shape != out.shape[1:]:
            raise DataError(
                f"{path}: entry {name!r} is {pixels.shape[1]}x{pixels.shape[0]} but earlier images "
                f"are {out.shape[2]}x{out.shape[1]}; all images must have the same size"
            )
        out[i] = pixels
    return out
