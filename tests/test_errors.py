"""The error corpus: every broken spec in tests/errors/ against its golden message.

Each ``tests/errors/NAME.fg`` is small and broken on purpose; ``NAME.err`` is the exact
text a user sees (``str(SpecError)``), with the path relative to the repository root.
Specs that load but cannot be planned (E504-E506) get the message of
``Program.plan()`` for the algorithm their ``train`` section names.

    pytest tests/test_errors.py --update-goldens   # rewrite the .err files, then READ them
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fgc.tools.cli import main
from fgc.errors import FgError, SpecError
from fgc.front.parse import MAX_SPEC_BYTES
from fgc.plan.program import load

ROOT = Path(__file__).resolve().parent.parent
ERRORS = ROOT / "tests" / "errors"
CASES = sorted(ERRORS.glob("*.fg"))
CODE = re.compile(r"\bE\d{3}\b")


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _message(rel: str) -> tuple[str, str]:
    """(stage, message): stage is "load" or "plan". Runs with cwd = ROOT."""
    try:
        prog = load(rel)
    except SpecError as e:
        return "load", str(e) + "\n"
    try:
        prog.plan()
    except SpecError as e:
        return "plan", str(e) + "\n"
    pytest.fail(f"{rel} is a valid spec; the error corpus holds broken ones")


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("spec", CASES, ids=lambda p: p.stem)
def test_golden_message(spec, at_root, request):
    _, msg = _message(_rel(spec))
    golden = spec.with_suffix(".err")
    if request.config.getoption("--update-goldens"):
        golden.write_text(msg, encoding="utf-8")
        return
    assert golden.exists(), f"no golden for {spec.name}; run pytest --update-goldens and read it"
    assert msg == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", CASES, ids=lambda p: p.stem)
def test_message_shape(spec, at_root):
    """Every diagnostic names the file, and shows its line with a caret when there is one."""
    stage, msg = _message(_rel(spec))
    lines = msg.rstrip("\n").split("\n")
    heads = [l for l in lines if re.search(r"error\[E\d{3}\]", l)]
    assert heads, msg
    for h in heads:
        assert h.startswith(f"{_rel(spec)}:"), f"diagnostic without a location: {h}"
    if len(heads) > 1:
        assert lines[-1] == f"{len(heads)} errors"
    assert "Traceback" not in msg


@pytest.mark.parametrize("spec", [p for p in CASES if p.read_bytes().startswith(b"#")],
                         ids=lambda p: p.stem)
def test_header_codes_are_reported(spec, at_root):
    """The codes a spec's first comment line names are the codes it produces."""
    first = spec.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    named = set(CODE.findall(first))
    _, msg = _message(_rel(spec))
    got = set(re.findall(r"error\[(E\d{3})\]", msg))
    assert named <= got, f"{spec.name} names {sorted(named - got)} but does not produce them"


def test_corpus_covers_every_code():
    emitted = set()
    for py in (ROOT / "fgc").glob("*.py"):
        emitted |= set(re.findall(r'["=]"?(E\d{3})"', py.read_text(encoding="utf-8")))
    covered = set()
    for err in ERRORS.glob("*.err"):
        covered |= set(re.findall(r"error\[(E\d{3})\]", err.read_text(encoding="utf-8")))
    assert len(CASES) >= 35
    missing = emitted - covered - {"E005"}  # E005 (a file over 1 MB) is tested below
    assert not missing, f"no spec in tests/errors/ produces {sorted(missing)}"


def test_several_errors_at_once():
    multi = [p for p in ERRORS.glob("*.err") if re.search(r"^\d+ errors$", p.read_text(), re.M)]
    assert len(multi) >= 5


@pytest.mark.parametrize("spec", CASES, ids=lambda p: p.stem)
def test_cli_check(spec, at_root, capsys):
    stage, msg = _message(_rel(spec))
    rc = main(["check", _rel(spec)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if stage == "load" or load(_rel(spec)).train.algorithm:
        # `fgc check` plans the algorithm a spec's `train` section names
        assert rc == 1
        assert err == msg
    else:  # nothing to plan: the spec itself is well formed
        assert rc == 0, err


@pytest.mark.parametrize("spec", [p for p in CASES if p.stem.startswith("plan_")],
                         ids=lambda p: p.stem)
def test_cli_viz_reports_plan_errors(spec, at_root, capsys, tmp_path):
    pytest.importorskip("fgc.tools.viz")
    stage, msg = _message(_rel(spec))
    assert stage == "plan"
    rc = main(["viz", _rel(spec), "-o", str(tmp_path / "graph.dot")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert err == msg
    assert not (tmp_path / "graph.dot").exists()


def test_plan_with_an_explicit_algorithm_points_at_the_losses(at_root):
    prog = load("tests/errors/plan_no_final_loss.fg")
    with pytest.raises(SpecError) as e:
        prog.plan("fg-w")
    (d,) = e.value.diagnostics
    assert d.code == "E504" and d.span.line == 10  # `loss local = probe on blocks`


def test_unknown_algorithm_in_plan():
    prog = load(ROOT / "specs" / "mlp.fg")
    with pytest.raises(SpecError) as e:
        prog.plan("lg-fg-aa")
    assert e.value.codes == ["E207"] and "did you mean" in str(e.value)


def test_too_large(tmp_path, capsys):
    big = tmp_path / "big.fg"
    big.write_bytes(b"# padding\n" * (MAX_SPEC_BYTES // 10 + 1))
    with pytest.raises(SpecError) as e:
        load(big)
    assert e.value.codes == ["E005"]
    assert main(["check", str(big)]) == 1
    err = capsys.readouterr().err
    assert "error[E005]" in err and "Traceback" not in err


@pytest.mark.parametrize("path,what", [("no/such/file.fg", "no such file"),
                                       (".", "is a directory")])
def test_unreadable_paths(path, what, at_root, capsys):
    with pytest.raises(FgError, match=what):
        load(path)
    assert main(["check", path]) == 1
    assert what in capsys.readouterr().err
