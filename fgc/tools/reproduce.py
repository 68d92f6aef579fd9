"""`fgc reproduce TABLE`: one command per table of the papers fgc reproduces.

``ren-table3`` trains every row of Ren et al. 2023's Table 3 that fgc implements on the
paper's spec (MNIST: LocalMixer M/1/16; CIFAR-10: M/8/16) with the paper's recipe, the
spec's ``train`` section (or fewer epochs: ``--epochs N``), each row into ``DIR/<row>/``
through :func:`fgc.training.train.train`. A row whose run finished with the same settings
is kept, one interrupted is resumed. It then writes ``DIR/table.md``: our test and train
error next to the paper's (REFERENCE §6), and ``DIR/curves.png`` (:mod:`fgc.tools.plot`).
Rows whose rules fgc does not have yet (the feedback-alignment family) are listed as not
available, never faked.

Example:
    >>> from fgc.tools.reproduce import reproduce
    >>> reproduce("ren-table3", out="runs/table3", epochs=2)          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fgc.errors import FgError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: specs/ sits next to fgc/


class ReproduceError(FgError):
    """An unknown table, a table that needs rules fgc does not have, or a run directory
    that holds another run."""


@dataclass(frozen=True)
class Row:
    label: str  # as the paper writes it
    algorithm: str | None  # None: not available in fgc yet
    why: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    specs: dict[str, str]  # dataset -> spec path (relative to the checkout)
    columns: dict[str, str]  # dataset -> the paper's column
    rows: tuple[Row, ...]
    paper: dict[str, dict[str, tuple[float, float]]]  # dataset -> label -> (test, train) %
    needs: str = ""  # a table fgc cannot run yet: what it needs


_FA = "feedback alignment is not implemented in fgc yet"
REN_TABLE3 = Table(
    "ren-table3", "Ren et al. 2023, Table 3 (supervised, test / train error %)",
    {"mnist": "specs/mixer-m-1-16.fg", "cifar10": "specs/mixer-m-8-16.fg"},
    {"mnist": "MNIST M/1/16", "cifar10": "CIFAR-10 M/8/16"},
    (Row("BP", "bp"), Row("L-BP", "l-bp"), Row("LG-BP", "lg-bp"), Row("FA", None, _FA),
     Row("L-FA", None, _FA), Row("LG-FA", None, _FA), Row("DFA", None, _FA),
     Row("FG-W", "fg-w"), Row("FG-A", "fg-a"), Row("LG-FG-W", "lg-fg-w"),
     Row("LG-FG-A", "lg-fg-a")),
    {"mnist": {"BP": (2.41, 0.00), "L-BP": (2.16, 0.00), "LG-BP": (2.81, 0.00),
               "FA": (2.90, 0.00), "L-FA": (2.90, 0.00), "LG-FA": (2.50, 0.00),
               "DFA": (3.17, 0.00), "FG-W": (8.56, 8.64), "FG-A": (3.76, 1.75),
               "LG-FG-W": (5.66, 4.59), "LG-FG-A": (2.55, 0.00)},
     "cifar10": {"BP": (33.62, 0.00), "L-BP": (30.75, 0.00), "LG-BP": (33.84, 0.05),
                 "FA": (39.94, 28.44), "L-FA": (39.74, 28.98), "LG-FA": (39.73, 32.32),
                 "DFA": (38.80, 33.69), "FG-W": (55.95, 54.28), "FG-A": (59.72, 41.29),
                 "LG-FG-W": (52.70, 51.71), "LG-FG-A": (30.68, 19.39)}})

TABLES = {
    "ren-table3": REN_TABLE3,
    "ren-table4": Table("ren-table4", "Ren et al. 2023, Table 4 (contrastive + linear readout)",
                        {}, {}, (), {}, needs="a contrastive (SimCLR) local loss, BYOL-style "
                        "augmentation and a linear readout stage"),
    "fournier-table2": Table("fournier-table2", "Fournier et al. 2023, CIFAR-10 with local "
                             "guesses", {}, {}, (), {}, needs="gradient guesses from local "
                             "auxiliary nets (estimator guess = local / ntk) and a ResNet-18 "
                             "spec with batch norm"),
}


def reproduce(table: str, *, out: str | Path, dataset: str = "mnist", epochs: int | None = None,
              data_dir: str | None = None, rows: list[str] | None = None,
              spec: str | Path | None = None, sets: tuple[str, ...] = (),
              log: Callable[[str], None] | None = None, **overrides) -> Path:
    """Trains the table's rows and writes ``out/table.md`` and ``out/curves.png``.

    Args:
      table: ``ren-table3`` (``ren-table4`` and ``fournier-table2`` say what they need).
      out: the folder; each row trains into ``out/<algorithm>/``.
      dataset: the paper's column: ``mnist`` or ``cifar10``; also any dataset
        :func:`~fgc.training.data.load_dataset` accepts (with ``spec``) or a Dataset.
      epochs: fewer epochs than the paper's recipe (default: the spec's).
      rows: only these algorithms (default: every available row).
      spec: another spec than the paper's (e.g. a small one for a quick check).
      sets: ``--set KEY=VALUE`` overrides of the spec.
      overrides: more :func:`~fgc.training.train.train` settings (``batch_size``, ...).

    Returns:
      The path of the markdown table.
    """
    t = TABLES.get(table)
    if t is None:
        from fgc.graph.build import suggest
        raise ReproduceError(f"unknown table `{table}`; "
                             + (suggest(table, TABLES) or f"tables: {', '.join(TABLES)}"))
    if t.needs:
        raise ReproduceError(f"`{table}` ({t.title}) needs {t.needs}, which fgc does not have "
                             f"yet; tables that run now: "
                             f"{', '.join(n for n, x in TABLES.items() if not x.needs)}")
    name = getattr(dataset, "name", dataset)
    column = name if name in t.specs else None
    if spec is None and column is None:
        raise ReproduceError(f"{table} has columns {', '.join(t.specs)}, not `{name}`; pass "
                             "--dataset " + " or --dataset ".join(t.specs))
    spec_path = Path(spec) if spec is not None else ROOT / t.specs[column]
    if not spec_path.is_file():
        raise ReproduceError(f"{spec_path}: no such spec (run fgc reproduce from a checkout "
                             "of fgc, or pass --spec)")
    from fgc.front.overrides import load
    from fgc.training.train import train
    prog = load(spec_path, list(sets))
    chosen = _rows(t, rows)
    log = log or print
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReproduceError(f"cannot create `{out}`: {e.strerror or e}") from None
    recipe = prog.train
    results = {}
    for row in chosen:
        run_dir = out / row.algorithm
        settings = {"table": table, "spec": str(spec_path), "dataset": name,
                    "spec_sha": hashlib.sha256(prog.spec.source.encode()).hexdigest()[:16],
                    "epochs": epochs or recipe.epochs,
                    **{k: v for k, v in sorted(overrides.items()) if v is not None}}
        summary = _finished(run_dir, settings)
        if summary is not None:
            log(f"fgc reproduce: {row.label}: kept the finished run in {run_dir}")
        else:
            # Anything of a run there (its run.json, a checkpoint) is continued.
            resume = run_dir.is_dir() and any(run_dir.iterdir())
            log(f"fgc reproduce: {row.label}: {'resuming' if resume else 'training'} "
                f"{row.algorithm} into {run_dir}")
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(_settings_file(run_dir), settings)
            t0 = time.perf_counter()
            summary = train(prog, out=run_dir, algorithm=row.algorithm, dataset=dataset,
                            data_dir=data_dir, epochs=epochs, resume=resume, log=log,
                            **overrides)
            summary.setdefault("wall_seconds", time.perf_counter() - t0)
        results[row.label] = summary
    text = format_table(t, column, results, spec_path, epochs or recipe.epochs, recipe, name)
    table_path = out / "table.md"
    table_path.write_text(text, encoding="utf-8")
    if results:
        from fgc.tools.plot import plot_runs
        plot_runs([out / r.algorithm for r in chosen], out / "curves.png",
                  title=f"{t.title.split(' (')[0]}: {t.columns.get(column, name)}")
    log(text)
    return table_path


def _rows(t: Table, names: list[str] | None) -> list[Row]:
    available = [r for r in t.rows if r.algorithm]
    if not names:
        return available
    by_name = {r.algorithm: r for r in available}
    by_label = {r.label.lower(): r for r in t.rows}
    out = []
    for n in names:
        r = by_name.get(n) or by_label.get(n.lower())
        if r is None:
            from fgc.graph.build import suggest
            raise ReproduceError(f"{t.name} has no row `{n}`; "
                                 + (suggest(n, by_name) or f"rows: {', '.join(by_name)}"))
        if r.algorithm is None:
            raise ReproduceError(f"row {r.label} of {t.name} is not available: {r.why}")
        out.append(r)
    return out


def _settings_file(run_dir: Path) -> Path:
    """Where a row's settings are kept: beside its run folder, which holds fgc train's
    files only (train refuses a folder of other files)."""
    return run_dir.parent / f"{run_dir.name}.reproduce.json"


def _finished(run_dir: Path, settings: dict) -> dict | None:
    """The summary of a finished run with these settings; None when there is none yet.

    Raises ReproduceError when the folder holds a run with other settings."""
    mine = _settings_file(run_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    try:
        old = json.loads(mine.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old != settings:
        diff = ("; ".join(f"{k}: {old.get(k)!r} → {v!r}" for k, v in settings.items()
                          if old.get(k) != v) if isinstance(old, dict) else "not made by "
                "fgc reproduce")
        raise ReproduceError(f"{run_dir} holds a run with other settings ({diff}); choose "
                             "another --out or remove it")
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # started, not finished: resumed by the caller


def _pct(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def format_table(t: Table, column: str | None, results: dict, spec: Path, epochs: int,
                 recipe, dataset: str) -> str:
    """The markdown table: every row of the paper, ours next to theirs."""
    paper = t.paper.get(column, {})
    opt = recipe.optimizer
    kw = ", ".join(f"{k} = {v}" for k, v in opt.kwargs)
    try:
        shown = spec.resolve().relative_to(ROOT)
    except ValueError:
        shown = spec
    lines = [f"# {t.title}: {t.columns.get(column, dataset)}", "",
             f"fgc on `{shown}`, dataset {dataset}, {epochs} epochs (the paper: "
             f"{1000 if column else '–'}), batch {recipe.batch_size}, {opt.name}({kw}), "
             f"schedule {recipe.schedule.name}, weight decay {recipe.weight_decay:g}.", "",
             "| method | fgc algorithm | test error % | train error % | paper test / train % "
             "| epochs | time |",
             "|---|---|---|---|---|---|---|"]
    for row in t.rows:
        ref = paper.get(row.label)
        theirs = f"{ref[0]:.2f} / {ref[1]:.2f}" if ref else "–"
        s = results.get(row.label)
        if row.algorithm is None:
            lines.append(f"| {row.label} | – | not available | not available | {theirs} | – | – |")
        elif s is None:
            lines.append(f"| {row.label} | {row.algorithm} | not run | not run | {theirs} | – | – |")
        else:
            wall = s.get("wall_seconds")
            lines.append(f"| {row.label} | {row.algorithm} | {_pct(s.get('test_error'))} | "
                         f"{_pct(s.get('train_error'))} | {theirs} | {s.get('epochs', '–')} | "
                         f"{'–' if wall is None else f'{wall:.0f} s'} |")
    missing = {r.why for r in t.rows if r.algorithm is None}
    if missing:
        lines += ["", "Not available: " + "; ".join(sorted(missing)) + "."]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# --- the command ---------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """Adds ``fgc reproduce``'s arguments to an :mod:`argparse` (sub)parser."""
    parser.description = ("Train every row of a paper's table with the paper's spec and "
                          "recipe, then write a markdown table next to the paper's numbers "
                          "and the learning curves. Finished rows are kept.")
    parser.add_argument("table", help=f"one of {', '.join(TABLES)}")
    parser.add_argument("--dataset", default="mnist",
                        help="the table's column: mnist or cifar10 (default: mnist)")
    parser.add_argument("--epochs", type=_positive, help="epochs per row (default: the "
                        "paper's recipe, in the spec's train section)")
    parser.add_argument("--out", help="folder for the runs, table.md and curves.png "
                        "(default: runs/TABLE-DATASET)")
    parser.add_argument("--data-dir", help="folder with mnist.npz / cifar10-jpeg.zip")
    parser.add_argument("--rows", type=lambda s: [x for x in s.split(",") if x],
                        metavar="A,B,...", help="only these rows (default: every available)")
    parser.add_argument("--batch-size", type=_positive, help="batch size (default: the spec's)")
    parser.add_argument("--spec", help="another spec than the paper's")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the spec (as fgc train --set; repeatable)")
    parser.set_defaults(fn=run)


def _positive(text: str) -> int:
    import argparse
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def run(args) -> int:
    out = args.out or f"runs/{args.table}-{args.dataset}"
    path = reproduce(args.table, out=out, dataset=args.dataset, epochs=args.epochs,
                     data_dir=args.data_dir, rows=args.rows, spec=args.spec,
                     sets=tuple(args.sets), batch_size=args.batch_size,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"wrote {path} and {Path(out) / 'curves.png'}")
    return 0
