"""Checkpoints: one file per run, written atomically.

A checkpoint is a single file: one line of JSON metadata (epoch, step, the run's
seed and RNG key, a hash of the spec and the settings that must not change on
resume), then the Equinox serialisation of ``(network, optimizer state)``. It is
written to a temporary file in the same directory, flushed to disk and renamed
over the old one, so a kill at any moment leaves the last good checkpoint
intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx

from fgc.errors import CheckpointError

FORMAT = 1
NAME = "checkpoint.eqx"


def save(path: str | os.PathLike, meta: dict[str, Any], state: Any) -> None:
    """Writes ``meta`` and the arrays of ``state`` to ``path`` atomically."""
    path = Path(path)
    header = json.dumps({"format": FORMAT, **meta}, sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            eqx.tree_serialise_leaves(f, state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata line of a checkpoint."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
        meta = json.loads(line)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint here; start a new run without --resume")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not an fgc checkpoint or corrupt ({e}); remove it to "
                              "start over, or point --out at the run you meant") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} "
                              f"(this fgc reads format {FORMAT})")
    return meta


def load(path: str | os.PathLike, like: Any) -> tuple[dict[str, Any], Any]:
    """Reads a checkpoint into the structure of ``like`` (a freshly built state of
    the same spec and algorithm): returns ``(meta, state)``."""
    path = Path(path)
    meta = read_meta(path)
    try:
        with open(path, "rb") as f:
            f.readline(1 << 20)
            state = eqx.tree_deserialise_leaves(f, like)
            if f.read(1):
                raise ValueError("trailing bytes after the arrays")
    except CheckpointError:
        raise
    except Exception as e:  # numpy/equinox raise many kinds for truncated or foreign data
        raise CheckpointError(
            f"{path}: the checkpoint is corrupt or was written for a different network "
            f"({type(e).__name__}: {e}); remove it to start over") from None
    return meta, state
