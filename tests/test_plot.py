"""`fgc plot`: learning curves from run directories, and what it says about broken ones."""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from fgc.errors import FgError
from fgc.tools.plot import DPI, PlotWarning, add_arguments, load_run, plot_runs, run


def make_run(root: Path, name: str, algorithm: str | None, *, epochs: int = 5,
             spec_name: str | None = "LocalMixer M/1/16", final: float = 3.0,
             summary: bool = True, tail: str = "") -> Path:
    """A fake `fgc train --out` directory; ``tail`` is appended after the last full line."""
    d = root / name
    d.mkdir(parents=True)
    lines = []
    for e in range(1, epochs + 1):
        err = final + 40 * math.exp(-e)
        lines.append(json.dumps({
            "epoch": e, "step": 469 * e, "train_loss": 2.3 * math.exp(-e / 2),
            "losses": {"local": 0.4, "final": 0.5}, "test_error": err,
            "train_error": None if e % 2 else err / 2, "lr": 0.01,
            "images_per_second": 5400.0, "seconds": 11.2}))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)
    if summary:
        (d / "summary.json").write_text(json.dumps({
            "algorithm": algorithm, "spec": "specs/mixer-m-1-16.fg", "spec_name": spec_name,
            "dataset": "mnist", "epochs": epochs, "test_error": final, "train_error": 0.4,
            "images_per_second": 5400.0, "wall_seconds": 230.0}))
    return d


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    root = tmp_path / "runs"
    return [
        make_run(root, "bp", "bp", epochs=8, final=1.1),
        make_run(root, "fg-w", "fg-w", epochs=3, final=9.5),
        make_run(root, "lg-fg-a", "lg-fg-a", epochs=6, final=2.9, spec_name="LocalMixer S/1/1"),
        # killed while writing epoch 5: a cut-off last line
        make_run(root, "killed", "lg-bp", epochs=4, tail='{"epoch": 5, "train_lo'),
        # still running: no summary.json yet
        make_run(root, "in-progress", None, epochs=2, summary=False),
    ]


def svg_text(path: Path) -> str:
    """All text of an SVG, as one string (labels are kept as <text>, not paths)."""
    return " ".join(t for el in ET.parse(path).iter() for t in [el.text] if t)


def test_png_is_a_whole_image_of_the_expected_size(runs, tmp_path):
    out = tmp_path / "curves.png"
    incomplete = r"killed.*metrics\.jsonl: line 5, the last, is incomplete"
    with pytest.warns(PlotWarning, match=incomplete):
        assert plot_runs(runs, out, title="MNIST") == out
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG"
        width, height = im.size
    assert width == 10 * DPI  # 10-inch figure; the height grows with the legend
    assert 3.5 * DPI < height < 6 * DPI
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "runs"]  # no temp file


def test_svg_has_every_legend_label_and_the_global_backend_is_untouched(runs, tmp_path,
                                                                         monkeypatch):
    def use(*args, **kwargs):
        raise AssertionError("plot_runs must not choose matplotlib's global backend")
    monkeypatch.setattr(matplotlib, "use", use)
    # Read without resolving it: rcParams["backend"] would pick one if none is chosen yet.
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    had_pyplot = "matplotlib.pyplot" in sys.modules
    out = tmp_path / "curves.svg"
    with pytest.warns(PlotWarning):
        plot_runs(runs, out, log_loss=True)
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules
    text = svg_text(out)
    for label in ["BP · LocalMixer M/1/16", "FG-W · LocalMixer M/1/16",
                  "LG-FG-A · LocalMixer S/1/1", "LG-BP · LocalMixer M/1/16",
                  "in-progress", "test 1.10%", "Test error (%)", "Epoch"]:
        assert label in text, label
    assert "epoch 2, unfinished" in text  # the run without summary.json


def test_pdf(runs, tmp_path):
    out = tmp_path / "curves.pdf"
    with pytest.warns(PlotWarning):
        plot_runs(runs[3:4], out)
    assert out.read_bytes().startswith(b"%PDF")


def test_load_run_reads_what_is_there(runs):
    with pytest.warns(PlotWarning, match="incomplete"):
        killed = load_run(runs[3])
    assert [e for e, _ in killed.test_error] == [1, 2, 3, 4]
    assert killed.label == "LG-BP · LocalMixer M/1/16" and killed.finished
    pending = load_run(runs[4] / "metrics.jsonl")  # the file works as well as its folder
    assert pending.label == "in-progress" and not pending.finished
    assert pending.final_test_error == pending.test_error[-1][1]


def test_bad_lines_and_nan_are_skipped_with_a_warning(tmp_path):
    d = make_run(tmp_path, "r", "fg-a", epochs=3)
    text = (d / "metrics.jsonl").read_text().splitlines()
    text.insert(1, "not json at all")
    text.insert(2, "[1, 2]")
    text.append('{"epoch": 4, "train_loss": NaN, "test_error": Infinity}')
    (d / "metrics.jsonl").write_text("\n".join(text) + "\n")
    with pytest.warns(PlotWarning) as caught:
        r = load_run(d)
    messages = " | ".join(str(w.message) for w in caught)
    assert "lines 2, 3 are not JSON objects" in messages
    assert "train_loss is NaN" in messages and "epoch 4" in messages
    assert [e for e, _ in r.train_loss] == [1, 2, 3]


def test_a_file_of_garbage_is_an_error(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.jsonl").write_text("epoch,test_error\n1,3.5\n")
    with pytest.raises(FgError, match=r"holds no epoch records: lines 1, 2 are not JSON"):
        plot_runs([d], tmp_path / "out.png")


def test_repeated_epochs_keep_the_latest_and_missing_fields_are_fine(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"test_error": 50}\n{"test_error": 40}\n'
                                     '{"epoch": 2, "test_error": 30}\n')
    r = load_run(d)
    assert r.test_error == ((1.0, 50.0), (2.0, 30.0)) and r.train_loss == ()
    plot_runs([d], tmp_path / "old.svg")  # a panel with no data says so instead of failing


@pytest.mark.parametrize("setup, match", [
    (lambda t: t / "nope", r"run directory `.*nope` does not exist; pass the folder given "
                           r"to `fgc train --out DIR`"),
    (lambda t: (t / "empty").mkdir() or t / "empty", r"`.*empty` has no metrics\.jsonl"),
    (lambda t: (t / "f.txt").write_text("x") and t / "f.txt", r"is a file, not a run directory"),
])
def test_not_a_run_directory(tmp_path, setup, match):
    with pytest.raises(FgError, match=match):
        plot_runs([setup(tmp_path)], tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_runs_with_nothing_recorded(tmp_path):
    empty = tmp_path / "starting"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(FgError, match=r"nothing to draw: `.*starting/metrics\.jsonl` has no "
                                      r"test_error or train_loss values yet.*wait for the first"):
        plot_runs([empty], tmp_path / "out.png")
    good = make_run(tmp_path, "good", "bp")
    with pytest.warns(PlotWarning, match="starting.*left out of the figure"):
        plot_runs([empty, good], tmp_path / "out.svg")  # the rest is still worth drawing
    with pytest.raises(FgError, match="no run directories given"):
        plot_runs([], tmp_path / "out.png")


def test_bad_output_paths(tmp_path):
    good = make_run(tmp_path, "good", "bp")
    with pytest.raises(FgError, match=r"unknown extension `\.jpg`; use one of \.png, \.svg, "
                                      r"\.pdf"):
        plot_runs([good], tmp_path / "x.jpg")
    with pytest.raises(FgError, match="folder .* does not exist .*mkdir -p"):
        plot_runs([good], tmp_path / "missing" / "x.png")


def test_a_failed_write_leaves_the_old_file_alone(tmp_path, monkeypatch):
    good = make_run(tmp_path, "good", "bp")
    out = tmp_path / "curves.png"
    out.write_bytes(b"old")
    from matplotlib.figure import Figure

    def boom(self, f, **kw):
        f.write(b"half a PNG")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(FgError, match="cannot write .*No space left on device"):
        plot_runs([good], out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "good"]


def test_duplicate_labels_are_told_apart(tmp_path):
    a = make_run(tmp_path / "seed0", "run", "bp")
    b = make_run(tmp_path / "seed1", "run", "bp")
    c = make_run(tmp_path, "other", "bp")
    out = tmp_path / "c.svg"
    plot_runs([a, b, c], out)
    text = svg_text(out)
    assert "BP · LocalMixer M/1/16 [run] #1" in text and "[other]" in text


def test_cli_arguments_and_warnings(runs, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fgc plot")
    add_arguments(parser)
    out = tmp_path / "cli.svg"
    args = parser.parse_args([*map(str, runs[2:4]), "-o", str(out), "--title", "T", "--log"])
    assert args.fn is run and args.log and args.title == "T"
    assert args.fn(args) == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out}\n"
    assert captured.err.startswith("fgc: warning: ") and "incomplete" in captured.err
    assert out.is_file()
    with pytest.raises(SystemExit):
        parser.parse_args([str(runs[0])])  # -o is required
    # Warnings are printed even when the command then fails.
    args = parser.parse_args([str(runs[3]), "-o", str(tmp_path / "x.gif")])
    with pytest.raises(FgError, match="unknown extension"):
        run(args)
    args = parser.parse_args([str(runs[3]), str(tmp_path / "nope"), "-o", str(out)])
    with pytest.raises(FgError, match="does not exist"):
        run(args)
    assert "incomplete" in capsys.readouterr().err
