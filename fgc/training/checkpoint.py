"""Checkpoints: the last two of a run, each with a checksum, written atomically.

A checkpoint file is three parts::

    FGC-CHECKPOINT 2 sha256=<64 hex digits> bytes=<n>\\n
    <one line of JSON metadata: run identity, epoch, step, loss sums, ...>\\n
    <the Equinox serialisation of the state pytree>

The checksum covers everything after the first line, so one flipped byte anywhere
(metadata or arrays) is found before anything is used. :func:`save` writes a
temporary file in the same directory, flushes it to disk, keeps the current
checkpoint as :data:`PREVIOUS` and renames the new one into :data:`NAME`: a kill at
any moment leaves at least one complete checkpoint. :func:`latest` reads the
newest good one and reports a corrupt one before falling back to the previous.
The state is opaque here: any pytree that ``eqx.tree_serialise_leaves`` takes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import equinox as eqx

from fgc.errors import CheckpointError

FORMAT = 2
NAME = "checkpoint.eqx"
PREVIOUS = "checkpoint.prev.eqx"
_MAGIC = b"FGC-CHECKPOINT"
_FIRST = re.compile(rb"FGC-CHECKPOINT (\d+) sha256=([0-9a-f]{64}) bytes=(\d+)\n\Z")
_MAX_META = 1 << 20
_REMOVE = "remove it to start over, or point --out at the run you meant"


class RunMismatch(CheckpointError):
    """A sound checkpoint of another run: never fallen back from, always reported."""


def encode(meta: dict[str, Any], payload: bytes) -> bytes:
    """The bytes of a checkpoint file holding ``meta`` and serialised ``payload``."""
    body = json.dumps(meta, sort_keys=True, allow_nan=False).encode() + b"\n" + payload
    digest = hashlib.sha256(body).hexdigest()
    return b"%s %d sha256=%s bytes=%d\n" % (_MAGIC, FORMAT, digest.encode(), len(body)) + body


def save(path: str | os.PathLike, meta: dict[str, Any], state: Any) -> None:
    """Writes ``meta`` and the arrays of ``state`` to ``path`` atomically; an existing
    checkpoint there becomes :data:`PREVIOUS` in the same folder.

    Raises:
      CheckpointError: the file could not be written (disk full, ...); the checkpoints
        already there are untouched.
    """
    path = Path(path)
    buf = io.BytesIO()
    tmp = None
    try:
        eqx.tree_serialise_leaves(buf, state)
        data = encode(meta, buf.getvalue())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, path.with_name(PREVIOUS))
        os.replace(tmp, path)
        tmp = None
        _sync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write the checkpoint ({e.strerror or e}); the "
                              "previous checkpoint is kept: free some space or fix the folder, "
                              "then continue with --resume") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def read(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """Checks a checkpoint's checksum and returns ``(meta, payload)``.

    Raises:
      CheckpointError: missing, not a checkpoint, corrupt (checksum, truncation,
        metadata that is not an object with integer ``epoch`` and ``step``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
            if first.startswith(b'{"'):  # format 1 began with its JSON metadata
                raise CheckpointError(f"{path}: written by an older fgc (format 1, without a "
                                      f"checksum; this fgc reads format {FORMAT}); {_REMOVE}")
            if not first.startswith(_MAGIC):
                raise CheckpointError(f"{path}: not an fgc checkpoint; {_REMOVE}")
            m = _FIRST.match(first)
            if m is None or int(m[1]) != FORMAT:
                version = first.split(b" ")[1:2]
                raise CheckpointError(
                    f"{path}: unknown checkpoint format "
                    f"{version[0].decode('ascii', 'replace') if version else '?'} "
                    f"(this fgc reads format {FORMAT}); {_REMOVE}")
            size = int(m[3])
            if size > os.fstat(f.fileno()).st_size:
                raise CheckpointError(f"{path}: corrupt checkpoint (cut short: {size:,} bytes "
                                      "announced, fewer there)")
            body = f.read(size + 1)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint here") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint; {_REMOVE}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    if len(body) != size:
        raise CheckpointError(f"{path}: corrupt checkpoint ({len(body):,} bytes after the "
                              f"first line, {size:,} expected: cut short or grown)")
    if hashlib.sha256(body).hexdigest() != m[2].decode():
        raise CheckpointError(f"{path}: corrupt checkpoint (the checksum does not match)")
    line, sep, payload = body.partition(b"\n")
    try:
        meta = json.loads(line) if sep and len(line) <= _MAX_META else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (its metadata is not a JSON object)")
    for key in ("epoch", "step"):
        v = meta.get(key)
        if type(v) is not int or v < 0:
            raise CheckpointError(f"{path}: corrupt checkpoint (`{key}` is {v!r}, not an "
                                  "integer ≥ 0)")
    return meta, payload


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a checkpoint (checksum verified)."""
    return read(path)[0]


def load(path: str | os.PathLike, like: Any) -> tuple[dict[str, Any], Any]:
    """Reads a checkpoint into the structure of ``like`` (a freshly built state of
    the same spec and algorithm): returns ``(meta, state)``."""
    meta, payload = read(path)
    return meta, _state(path, payload, like)


def _state(path, payload: bytes, like: Any) -> Any:
    try:
        f = io.BytesIO(payload)
        state = eqx.tree_deserialise_leaves(f, like)
        if f.read(1):
            raise ValueError("trailing bytes after the arrays")
    except Exception as e:  # numpy/equinox raise many kinds for foreign data
        raise CheckpointError(
            f"{path}: the checkpoint was written for a different network "
            f"({type(e).__name__}: {e}); {_REMOVE}") from None
    return state


def latest(folder: str | os.PathLike, like: Any, *, check: Callable[[dict, Path], None] | None = None,
           log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any], Any] | None:
    """The newest good checkpoint in ``folder``: ``(path, meta, state)``, or ``None`` when
    there is none at all.

    A corrupt :data:`NAME` is reported through ``log`` and :data:`PREVIOUS` used.
    ``check(meta, path)`` may raise :class:`CheckpointError` for a checkpoint that does not
    fit the run (treated as corrupt) or :class:`RunMismatch` (raised at once).

    Raises:
      CheckpointError: checkpoints exist but none is usable (every reason given).
    """
    folder = Path(folder)
    problems = []
    for name in (NAME, PREVIOUS):
        path = folder / name
        if not os.path.lexists(path):
            continue
        try:
            meta, payload = read(path)
            if check is not None:
                check(meta, path)
            state = _state(path, payload, like)
        except RunMismatch:
            raise
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            log(f"warning: {problems[0]}; resuming from the previous checkpoint {path} "
                f"(step {meta['step']})")
        return path, meta, state
    if not problems:
        return None
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems) + f"; {_REMOVE}")
