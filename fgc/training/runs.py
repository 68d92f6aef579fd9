"""A run's folder and identity: what may be written where, which checkpoint belongs to
which run, when to checkpoint, and the small files beside the checkpoints.

A run is identified by the canonical form of its spec (:func:`fgc.front.fmt.format_spec`
without comments and without the ``train`` section) and by the effective settings
that change its results (algorithm, dataset, batch size, seed, optimizer, schedule,
weight decay, flips, tangents, credit, aggregate). The spec's path, its comments, its layout and
the number of epochs are not part of it: the same run may be resumed from another
path, after ``fgc fmt -w``, or extended with a larger ``--epochs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from fgc.errors import CheckpointError, TrainingError
from fgc.training import checkpoint

MARKER = "run.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
OUTPUTS = (MARKER, METRICS, SUMMARY, checkpoint.NAME, checkpoint.PREVIOUS)
DEFAULT_SECONDS = 60.0  # a kill loses at most a minute ...
DEFAULT_FRACTION = 10   # ... or a tenth of an epoch


# --- the output folder -----------------------------------------------------------------------

def check_out(out: str | os.PathLike) -> bool:
    """Checks that ``out`` can hold a run, before anything is loaded or trained.

    Returns whether ``out`` already holds an fgc run.

    Raises:
      TrainingError: ``out`` is empty text, a file, under a file, an unrelated non-empty
        folder, or one of the files fgc writes there is a folder.
    """
    if str(out).strip() == "":
        raise TrainingError("--out is empty: name a folder for the run, e.g. --out runs/first")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out} is a file; --out names a folder for the run's files")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TrainingError(f"cannot create {out}: {parent} is a file, not a folder")
            break
    if not out.is_dir():
        return False
    names = sorted(os.listdir(out))
    for name in OUTPUTS:
        p = out / name
        if os.path.lexists(p) and not p.is_file():
            raise TrainingError(f"{p} is {'a folder' if p.is_dir() else 'not a file'}; fgc "
                                "writes a file there: remove it or choose another --out")
    ours = [n for n in names if n in OUTPUTS or  # or a temporary file a kill left behind
            n.startswith(".") and n.endswith(".tmp") and any(n.startswith(f".{o}.") for o in OUTPUTS)]
    if names and not ours:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")
        raise TrainingError(f"{out} is not empty and holds no fgc run ({shown}); choose a new "
                            "or empty folder for --out")
    return bool(ours)


def make_out(out: Path, identity: dict[str, Any]) -> None:
    """Creates ``out`` and writes its :data:`MARKER` (proves the folder is writable)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / MARKER, identity)
    except OSError as e:
        raise TrainingError(f"cannot write to {out}: {e.strerror or e}; choose another --out"
                            ) from None


def check_size(run) -> None:
    """E305 for the run's own batch size and tangents (the command line may raise them)."""
    from fgc.errors import SpecError
    from fgc.graph import sizes
    from fgc.graph.build import Diags
    d = Diags()
    sizes.check(run.plan.graph, run.train.batch_size, d, tangents=sizes.max_tangents(run.plan),
                why=" with these settings")
    if d:
        raise SpecError(d.items, run.program.spec.source)


# --- identity --------------------------------------------------------------------------------

def identity(run, *, tangents: int | None, credit: str | None,
             aggregate: str | None = None) -> dict[str, Any]:
    """What makes two runs the same run (see the module docstring). ``--chunk`` is not part
    of it: it changes memory, not the estimates (beyond round-off)."""
    from fgc.front.fmt import format_spec
    from fgc.front import syntax as S
    spec = run.program.spec
    items = tuple(i for i in spec.items if not (isinstance(i, S.Section) and i.kind == "train"))
    canon = format_spec(dataclasses.replace(spec, items=items, source=""))
    cfg = run.train
    settings = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                for k, v in dataclasses.asdict(cfg).items() if k not in ("epochs", "eval_batch_size")}
    # newer settings: at their default, runs from before they existed match
    for k in ("augment", "decay_on", "precision"):
        if getattr(cfg, k) == getattr(type(cfg)(), k):
            settings.pop(k)
    # views name the run only when used, so runs from before they existed keep their identity
    if cfg.views == 1:
        settings.pop("views")
    if cfg.view_augment is None:
        settings.pop("view_augment")
    else:
        settings["view_augment"] = _call_text(cfg.view_augment)
    settings.update(optimizer=_call_text(cfg.optimizer), schedule=_call_text(cfg.schedule),
                    algorithm=cfg.algorithm or "bp", tangents=tangents, credit=credit,
                    train_examples=len(run.data.x_train))
    settings["aggregate"] = aggregate  # None matches a run from before --aggregate existed
    return {"spec_sha": hashlib.sha256(canon.encode()).hexdigest()[:16], **settings}


def _call_text(call) -> str:
    args = ", ".join(f"{k} = {v!r}" for k, v in call.kwargs)
    return f"{call.name}({args})" if args else call.name


# settings `identity` leaves out at their default (so older runs keep their identity); a
# checkpoint that has one set must not match a run that has it at its default
_DROPPED_AT_DEFAULT = ("augment", "decay_on", "precision", "views", "view_augment")


def compare(meta: dict[str, Any], ident: dict[str, Any], where: Path) -> None:
    """Raises :class:`~fgc.training.checkpoint.RunMismatch` when a checkpoint's run is
    not ``ident``."""
    theirs = meta.get("run")
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{where}: corrupt checkpoint (no run identity)")
    changed = [f"{k}: {theirs.get(k)!r} → {v!r}" if k != "spec_sha" else
               "the spec (its canonical form differs, not only comments or layout)"
               for k, v in ident.items() if theirs.get(k) != v]
    changed += [f"{k}: {theirs[k]!r} → the default" for k in _DROPPED_AT_DEFAULT
                if k in theirs and k not in ident]
    if changed:
        raise checkpoint.RunMismatch(
            f"{where} belongs to a different run ({'; '.join(changed)}); resume with the same "
            "spec and settings, or use another --out")


def compare_marker(out: Path, ident: dict[str, Any]) -> None:
    """A run folder without a checkpoint yet must still be this run's (its :data:`MARKER`)."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no marker or a cut one: nothing was trained there yet
    if isinstance(marker, dict):
        compare({"run": marker}, ident, out / MARKER)


def check_position(meta: dict[str, Any], steps_per_epoch: int, epochs: int, where: Path) -> None:
    """A checkpoint's epoch and step must agree with each other and fit the run."""
    epoch, step = meta["epoch"], meta["step"]
    if not epoch * steps_per_epoch <= step < (epoch + 1) * steps_per_epoch:
        raise CheckpointError(f"{where}: corrupt checkpoint (step {step:,} is not in epoch "
                              f"{epoch + 1} of {steps_per_epoch:,} steps)")
    if not isinstance(meta.get("sums", {}), dict) or not all(
            isinstance(v, float) and math.isfinite(v) for v in meta.get("sums", {}).values()):
        raise CheckpointError(f"{where}: corrupt checkpoint (`sums` is not a table of numbers)")
    if step > epochs * steps_per_epoch:
        raise checkpoint.RunMismatch(
            f"{where} is at step {step:,} (epoch {epoch}), past the end of a run of "
            f"{epochs} epochs ({epochs * steps_per_epoch:,} steps); pass --epochs {epoch} "
            "or more to continue it")


def extension_note(run, old_epochs: int, step: int) -> str | None:
    """What resuming with another ``--epochs`` does to the learning-rate schedule."""
    new = run.train.epochs
    if old_epochs == new:
        return None
    verb = "extending" if new > old_epochs else "shortening"
    head = f"{verb} the run from {old_epochs} to {new} epochs"
    if run.train.schedule.name == "constant":
        return f"{head} (constant learning rate: the same as a run started with --epochs {new})"
    from fgc.training.train import make_optimizer
    _, before = make_optimizer(run.plan, dataclasses.replace(run.train, epochs=old_epochs),
                               run.steps_per_epoch)
    group = next(iter(run.schedules))
    lr0, lr1 = float(before[group](step)), float(run.schedules[group](step))
    return (f"{head}: the `{run.train.schedule.name}` schedule now spans {new} epochs, so at "
            f"step {step:,} the learning rate of `{group}` goes from {lr0:.4g} to {lr1:.4g}; the "
            f"result differs from a run started with --epochs {new}")


# --- when to checkpoint ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Policy:
    """Checkpoint every ``steps`` optimizer steps or every ``seconds``, whichever comes
    first (``None``: not by that measure)."""

    steps: int | None
    seconds: float | None

    @classmethod
    def parse(cls, every: int | str | None, steps_per_epoch: int) -> "Policy":
        """``None``: every tenth of an epoch or minute; ``N``: every N steps; ``Ns``, ``Nm``,
        ``Nh``: every N seconds, minutes, hours."""
        if every is None:
            return cls(max(1, math.ceil(steps_per_epoch / DEFAULT_FRACTION)), DEFAULT_SECONDS)
        if isinstance(every, int):
            return cls(every, None)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(every))
        if m is None or float(m[1]) <= 0:
            raise TrainingError(f"--checkpoint-every {every!r}: expected a number of steps (500) "
                                "or a time (30s, 5m, 1h) above 0")
        if not m[2]:
            if "." in m[1]:
                raise TrainingError(f"--checkpoint-every {every!r}: steps are whole numbers")
            return cls(int(m[1]), None)
        return cls(None, float(m[1]) * {"s": 1, "m": 60, "h": 3600}[m[2]])

    def clock(self, step: int) -> "_Clock":
        return _Clock(self, step, time.monotonic())


class _Clock:
    def __init__(self, policy: Policy, step: int, t: float):
        self.policy, self.step, self.t = policy, step, t

    def due(self, step: int) -> bool:
        p = self.policy
        return (p.steps is not None and step - self.step >= p.steps) or \
            (p.seconds is not None and time.monotonic() - self.t >= p.seconds)

    def reset(self, step: int) -> None:
        self.step, self.t = step, time.monotonic()


# --- the small files -------------------------------------------------------------------------

def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill mid-write: drop it and what follows
    return rows


def truncate_metrics(path: Path, epoch: int) -> list[dict]:
    """Keeps the metrics of epochs up to the checkpoint's (a run killed after writing
    an epoch's metrics but before its checkpoint repeats that epoch)."""
    rows = [r for r in read_metrics(path) if r.get("epoch", 0) <= epoch]
    if path.exists():
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def append_metrics(path: Path, row: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise TrainingError(f"{path}: cannot write the metrics ({e.strerror or e}); the last "
                            "checkpoint is kept: free some space, then continue with --resume"
                            ) from None


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"{path}: cannot write ({e.strerror or e})") from None


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")
