"""`fgc plot`: learning curves of finished or running training runs, side by side.

A run directory is what ``fgc train --out DIR`` writes: ``metrics.jsonl`` (one JSON object
per epoch) and, once the run has finished, ``summary.json``. :func:`plot_runs` draws the test
error and the training loss per epoch of several runs into one figure, one line per run:

* the colour names the algorithm (each of Ren et al.'s seven has its own, in every figure),
* the line style its family (backprop solid, forward gradient dashed, unknown dotted),
* the marker the spec when the runs use more than one spec, else the algorithm again, so the
  figure survives greyscale printing.

Examples:
    >>> from fgc.tools.plot import plot_runs
    >>> plot_runs(["runs/bp", "runs/lg-fg-a"], "curves.pdf", title="MNIST")  # doctest: +SKIP
    PosixPath('curves.pdf')

Bad input never produces a traceback: a path that is not a run directory raises
:class:`~fgc.errors.FgError` naming the file and the fix; damage that leaves the rest
plottable (a last line cut off by a killed run, a corrupt line, NaN values, an unreadable
``summary.json``) emits a :class:`PlotWarning` and is skipped. matplotlib is imported only
when drawing, and only through its object-oriented API: neither pyplot nor the global
backend is touched.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fgc.errors import FgError

__all__ = ["PlotWarning", "Run", "add_arguments", "load_run", "plot_runs", "run"]

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DPI = 150
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

# Okabe & Ito's colour-blind-safe palette (yellow left out: unreadable on white).
_STYLES: dict[str, tuple[str, str, str]] = {  # algorithm: (colour, line style, marker)
    "bp": ("#000000", "-", "o"),
    "l-bp": ("#0072B2", "-", "s"),
    "lg-bp": ("#009E73", "-", "^"),
    "fg-w": ("#E69F00", "--", "v"),
    "fg-a": ("#D55E00", "--", "D"),
    "lg-fg-w": ("#CC79A7", "--", "P"),
    "lg-fg-a": ("#56B4E9", "--", "X"),
}
# Colours for algorithms defined in a spec, and for runs without summary.json.
_SPARE_COLOURS = ("#7F7F7F", "#8C564B", "#BCBD22", "#17BECF", "#9467BD", "#1F3A93",
                  "#E377C2", "#2CA02C")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_MARKS_PER_LINE = 10  # markers on a long curve; a marker every epoch turns a line into a band

_RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.linewidth": 0.6,
    "grid.alpha": 0.35,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "svg.fonttype": "none",  # text stays text: searchable, editable in a vector editor
    "svg.hashsalt": "fgc",  # stable element ids, so redrawing an unchanged figure is no diff
    "pdf.fonttype": 42,  # TrueType, not Type 3: what journals' PDF checkers ask for
}


class PlotWarning(UserWarning):
    """Part of a run could not be read and is left out of the figure; the rest is drawn."""


@dataclass(frozen=True)
class Run:
    """One training run as :func:`plot_runs` draws it.

    Each series holds ``(epoch, value)`` pairs sorted by epoch, finite values only; a metric
    a run never recorded is an empty tuple. ``finished`` says whether ``summary.json`` was
    there: the final numbers come from it, else from the last epoch recorded.
    """

    path: Path
    name: str
    algorithm: str | None
    spec_name: str | None
    test_error: tuple[tuple[float, float], ...]
    train_loss: tuple[tuple[float, float], ...]
    final_test_error: float | None
    final_train_error: float | None
    last_epoch: float | None
    finished: bool

    @property
    def label(self) -> str:
        """``ALGORITHM · SPEC-NAME``; the directory name stands in for what is unknown."""
        if self.algorithm is None:
            return self.name
        return f"{self.algorithm.upper()} · {self.spec_name or self.name}"


def _warn(message: str) -> None:
    warnings.warn(message, PlotWarning, stacklevel=3)


def _finite(v) -> float | None:
    """A JSON number as float; None for null, NaN, ±Inf, booleans and non-numbers."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _run_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name == METRICS:  # `fgc plot runs/*/metrics.jsonl` means the same
        p = p.parent
    if not p.exists():
        raise FgError(f"run directory `{p}` does not exist; pass the folder given to "
                      "`fgc train --out DIR`")
    if not p.is_dir():
        raise FgError(f"`{p}` is a file, not a run directory; pass the folder given to "
                      f"`fgc train --out DIR`, which holds {METRICS}")
    if not (p / METRICS).is_file():
        raise FgError(f"`{p}` has no {METRICS}, so it is not a run directory: pass the folder "
                      "given to `fgc train --out DIR` (a run writes its first line there when "
                      "its first epoch ends)")
    return p


def _read_metrics(path: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``, skipping (with a warning) what is broken."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FgError(f"cannot read `{path}`: {e.strerror or e}") from None
    lines = data.split(b"\n")
    records, bad = [], []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            if i == len(lines):  # no newline after it: the writer stopped mid-line
                _warn(f"{path}: line {i}, the last, is incomplete (the run was killed while "
                      "writing it, or is writing it now); skipped it")
            else:
                bad.append(i)
            continue
        if not isinstance(rec, dict):
            bad.append(i)
            continue
        records.append(rec)
    if bad and not records:
        raise FgError(f"`{path}` holds no epoch records: {_lines(bad)} "
                      f"{'is' if len(bad) == 1 else 'are'} not JSON objects. Is it a "
                      "metrics file written by `fgc train --out DIR`?")
    if bad:
        _warn(f"{path}: {_lines(bad)} {'is' if len(bad) == 1 else 'are'} not JSON objects; "
              "skipped (each line should be one epoch's metrics as written by `fgc train`)")
    return records


def _lines(nums: Sequence[int]) -> str:
    shown = ", ".join(map(str, nums[:5])) + (f" and {len(nums) - 5} more" if len(nums) > 5 else "")
    return f"line{'s' if len(nums) > 1 else ''} {shown}"


def _read_summary(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _warn(f"{path} cannot be read ({e}); labelling the run by its directory name. "
              "Delete the file to silence this, or rerun `fgc train` to rewrite it")
        return {}
    if not isinstance(summary, dict):
        _warn(f"{path} is not a JSON object; labelling the run by its directory name")
        return {}
    return summary


def _series(path: Path, records: list[dict], field: str, epochs: list[float]):
    points, broken = [], []
    for rec, epoch in zip(records, epochs):
        if field not in rec or rec[field] is None:
            continue  # not measured that epoch: fine
        v = _finite(rec[field])
        if v is None:
            broken.append(epoch)
        else:
            points.append((epoch, v))
    if broken:
        what = ", ".join(f"{e:g}" for e in broken[:5]) + (" …" if len(broken) > 5 else "")
        _warn(f"{path}: {field} is NaN, infinite or not a number at epoch"
              f"{'s' if len(broken) > 1 else ''} {what} (did training diverge?); "
              "those points are not drawn")
    return tuple(points)


def load_run(path: str | os.PathLike) -> Run:
    """Reads one run directory written by ``fgc train --out DIR``.

    Args:
        path: the run directory (or its ``metrics.jsonl``).

    Returns:
        The run's curves and final numbers.

    Raises:
        FgError: ``path`` is not a run directory or its metrics cannot be read.
    """
    d = _run_dir(path)
    metrics = d / METRICS
    records = _read_metrics(metrics)
    # Epochs count from 1; a record without one is the epoch after the one before it.
    by_epoch: dict[float, dict] = {}
    epoch = 0.0
    for rec in records:
        e = _finite(rec.get("epoch"))
        epoch = e if e is not None else epoch + 1
        by_epoch[epoch] = rec  # a resumed run repeats epochs: its latest record wins
    epochs = sorted(by_epoch)
    records = [by_epoch[e] for e in epochs]

    summary = _read_summary(d / SUMMARY)
    algorithm = summary.get("algorithm") if isinstance(summary.get("algorithm"), str) else None
    spec_name = summary.get("spec_name") if isinstance(summary.get("spec_name"), str) else None
    if spec_name is None and isinstance(summary.get("spec"), str):
        spec_name = Path(summary["spec"]).stem or None

    test_error = _series(metrics, records, "test_error", epochs)
    train_loss = _series(metrics, records, "train_loss", epochs)
    last = records[-1] if records else {}
    final_test = _finite(summary.get("test_error"))
    final_train = _finite(summary.get("train_error"))
    if not summary:
        final_test = _finite(last.get("test_error"))
        final_train = _finite(last.get("train_error"))
    return Run(path=d, name=d.resolve().name or str(d), algorithm=algorithm,
               spec_name=spec_name, test_error=test_error, train_loss=train_loss,
               final_test_error=final_test, final_train_error=final_train,
               last_epoch=epochs[-1] if epochs else None, finished=bool(summary))


def _legend_label(run: Run, label: str) -> str:
    parts = []
    if run.final_test_error is not None:
        parts.append(f"test {run.final_test_error:.2f}%")
    if run.final_train_error is not None:
        parts.append(f"train {run.final_train_error:.2f}%")
    if not run.finished and run.last_epoch is not None:
        parts.append(f"epoch {run.last_epoch:g}, unfinished")
    return f"{label}  ({', '.join(parts)})" if parts else label


def _unique_labels(runs: Sequence[Run]) -> list[str]:
    """Run labels, with the directory name added where two runs would read the same."""
    labels = [r.label for r in runs]
    dup = {l for l in labels if labels.count(l) > 1}
    labels = [f"{l} [{r.name}]" if l in dup and l != r.name else l for l, r in zip(labels, runs)]
    seen: dict[str, int] = {}
    out = []
    for l in labels:
        seen[l] = seen.get(l, 0) + 1
        out.append(l if labels.count(l) == 1 else f"{l} #{seen[l]}")
    return out


def _family_style(algorithm: str | None) -> str:
    if algorithm is None:
        return ":"
    words = algorithm.lower().replace("_", "-").split("-")
    return "--" if "fg" in words else "-" if "bp" in words else ":"


def _styles(runs: Sequence[Run]) -> list[tuple[str, str, str]]:
    """(colour, line style, marker) per run; fixed for the seven presets."""
    spare: dict[str, tuple[str, str]] = {}
    specs: dict[str, str] = {}
    for r in runs:
        if r.spec_name is not None:
            specs.setdefault(r.spec_name, _MARKERS[len(specs) % len(_MARKERS)])
    several_specs = len(specs) > 1
    out = []
    for r in runs:
        key = r.algorithm.lower() if r.algorithm else None
        if key in _STYLES:
            colour, style, marker = _STYLES[key]
        else:
            # Runs without an algorithm each get their own colour; they may be anything.
            k = key if key is not None else f"\0{r.path}"
            n = len(spare)
            colour, marker = spare.setdefault(k, (_SPARE_COLOURS[n % len(_SPARE_COLOURS)],
                                                  _MARKERS[n % len(_MARKERS)]))
            style = _family_style(key)
        if several_specs and r.spec_name is not None:
            marker = specs[r.spec_name]
        out.append((colour, style, marker))
    return out


def _check_output(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise FgError(f"cannot draw to `{out}`: unknown extension `{out.suffix or '(none)'}`; "
                      f"use one of {', '.join(FORMATS)}")
    parent = out.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise FgError(f"cannot write `{out}`: `{blocker}` is a file, not a folder")
    if not parent.is_dir():
        raise FgError(f"cannot write `{out}`: folder `{parent}` does not exist "
                      f"(create it with `mkdir -p {parent}`)")
    if out.is_dir():
        raise FgError(f"cannot write `{out}`: it is a folder; give a file name such as "
                      f"`{out / 'curves.png'}`")
    return fmt


def plot_runs(run_dirs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
              title: str | None = None, log_loss: bool = False) -> Path:
    """Draws test error and training loss per epoch of training runs into one figure.

    Args:
        run_dirs: folders written by ``fgc train --out DIR`` (one line per run, in order).
        out: the figure to write; its suffix picks the format: ``.png`` (150 dpi), ``.svg``
            or ``.pdf`` (text kept as text). Written whole or not at all.
        title: a title over both panels.
        log_loss: draw the training loss on a logarithmic axis.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        FgError: no runs, a path that is not a run directory, nothing to draw in any run, or
            an output path that cannot be written.
    """
    out = Path(out)
    fmt = _check_output(out)
    paths = list(run_dirs)
    if not paths:
        raise FgError("no run directories given; pass one or more folders written by "
                      "`fgc train --out DIR`")
    runs: list[Run] = []
    blank: list[Run] = []
    seen: set[Path] = set()
    for p in paths:
        r = load_run(p)
        if r.path.resolve() in seen:
            _warn(f"{r.path} is given twice; drawn once")
            continue
        seen.add(r.path.resolve())
        (runs if r.test_error or r.train_loss else blank).append(r)
    if not runs:
        which = ", ".join(f"`{r.path / METRICS}`" for r in blank)
        raise FgError(f"nothing to draw: {which} {'has' if len(blank) == 1 else 'have'} no "
                      "test_error or train_loss values yet (`fgc train` appends a line per "
                      "epoch); wait for the first epoch to finish")
    for r in blank:
        _warn(f"{r.path / METRICS} has no test_error or train_loss values yet; "
              "the run is left out of the figure")

    import matplotlib
    with matplotlib.rc_context(_RC):
        fig = _draw(runs, title=title, log_loss=log_loss)
        _save(fig, out, fmt)
    return out


def _draw(runs: Sequence[Run], *, title: str | None, log_loss: bool):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    labels = [_legend_label(r, l) for r, l in zip(runs, _unique_labels(runs))]
    ncols = 1 if len(runs) == 1 else 2 if max(map(len, labels)) > 38 or len(runs) == 2 else 3
    ncols = min(ncols, len(runs))
    rows = -(-len(runs) // ncols)
    height = 3.5 + 0.24 * rows + (0.35 if title else 0.0)
    fig = Figure(figsize=(10.0, height), layout="constrained")
    FigureCanvasAgg(fig)  # the canvas is the figure's own; no global backend is consulted
    err_ax, loss_ax = fig.subplots(1, 2)

    handles = []
    for run, label, (colour, style, marker) in zip(runs, labels, _styles(runs)):
        handle = None
        for ax, series in ((err_ax, run.test_error), (loss_ax, run.train_loss)):
            if series:
                xs, ys = zip(*series)
                (handle,) = ax.plot(xs, ys, color=colour, linestyle=style, marker=marker,
                                    markevery=max(1, round(len(xs) / _MARKS_PER_LINE)),
                                    label=label)
        handles.append(handle)  # load_run's caller keeps only runs with something to draw

    err_ax.set(title="Test error", xlabel="Epoch", ylabel="Test error (%)")
    loss_ax.set(title="Training loss", xlabel="Epoch",
                ylabel="Training loss (cross-entropy, nats)")
    if any(r.test_error for r in runs):
        err_ax.set_ylim(bottom=0)
    if log_loss:
        loss_ax.set_yscale("log")
        # 0.1, 0.2, 0.5, 1, 2 … read better than bare powers of ten over a decade or two.
        loss_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        loss_ax.yaxis.set_minor_formatter(NullFormatter())
    for ax, what in ((err_ax, "test error"), (loss_ax, "training loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        if not ax.lines:
            ax.set_axis_off()  # empty axes with ticks would suggest a scale and a zero
            ax.text(0.5, 0.5, f"no {what} recorded", transform=ax.transAxes,
                    ha="center", va="center", color="0.45")
    if title:
        fig.suptitle(title, fontsize=12.5)
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False,
               handlelength=3.0, columnspacing=2.0)
    return fig


def _save(fig, out: Path, fmt: str) -> None:
    """Writes through a temporary file next to ``out``, renamed into place when complete."""
    metadata = {"png": {"Software": "fgc"}, "svg": {"Date": None},
                "pdf": {"CreationDate": None}}[fmt]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=DPI, metadata=metadata)
        os.replace(tmp, out)
    except OSError as e:
        raise FgError(f"cannot write `{out}`: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def add_arguments(parser) -> None:
    """Adds ``fgc plot``'s arguments to an :mod:`argparse` (sub)parser and sets ``fn=run``."""
    parser.description = ("Draw test error and training loss per epoch of runs written by "
                          "`fgc train --out DIR`, one line per run.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="folders written by `fgc train --out DIR`")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="figure to write: .png (150 dpi), .svg or .pdf")
    parser.add_argument("--title", default=None, help="title over both panels")
    parser.add_argument("--log", action="store_true",
                        help="logarithmic training-loss axis")
    parser.set_defaults(fn=run)


def run(args) -> int:
    """Runs ``fgc plot`` from parsed arguments; warnings are printed as ``fgc: warning:``.

    FgError propagates, for the CLI to print.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PlotWarning)
            out = plot_runs(args.runs, args.output, title=args.title, log_loss=args.log)
    finally:  # what was skipped matters most when the command then fails
        for w in caught:
            if issubclass(w.category, PlotWarning):
                print(f"fgc: warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {out}")
    return 0
