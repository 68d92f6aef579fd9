"""`fgc fmt`: the canonical printer round-trips every spec and keeps every comment."""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgc.front import syntax as S
from fgc.tools.cli import main
from fgc.errors import SpecError
from fgc.front.fmt import WIDTH, format_spec, format_value
from fgc.front.parse import parse, parse_file

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.fg"))
ALGORITHMS = ROOT / "grammar" / "algorithms.fg"
ALL = SPECS + [ALGORITHMS]


def shape(x):
    """The syntax tree as nested tuples, spans left out, numbers tagged with their type."""
    if dataclasses.is_dataclass(x):
        return (type(x).__name__,) + tuple(shape(getattr(x, f.name))
                                           for f in dataclasses.fields(x) if f.compare)
    if isinstance(x, tuple):
        return tuple(shape(i) for i in x)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return (type(x).__name__, x)
    return x


def same_tree(a: S.SpecFile, b: S.SpecFile) -> bool:
    return a == b and shape(a) == shape(b)


_LEX = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')


def comments(text: str) -> Counter:
    return Counter(m.group().rstrip() for m in _LEX.finditer(text) if m.group().startswith("#"))


def check_text(text: str) -> str:
    """Formats ``text`` and checks every property of the printer; returns the result."""
    spec = parse(text, "<in>")
    out = format_spec(spec)
    again = parse(out, "<out>")
    assert same_tree(again, spec), out
    assert format_spec(again) == out, "not idempotent"
    assert comments(out) == comments(text), out
    assert out.endswith("\n") and not out.endswith("\n\n")
    assert "\n\n\n" not in out
    for line in out.split("\n"):
        assert line == line.rstrip()
    return out


# --- the corpus ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_corpus_round_trip(path):
    check_text(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_corpus_is_canonical(path):
    assert format_spec(parse_file(path)) == path.read_text(encoding="utf-8")


def test_fmt_check_cli(capsys):
    assert main(["fmt", "--check", *map(str, SPECS)]) == 0
    assert capsys.readouterr().err == ""


def test_fmt_prints_to_stdout(capsys):
    assert main(["fmt", str(SPECS[0])]) == 0
    assert capsys.readouterr().out == SPECS[0].read_text(encoding="utf-8")


def _ugly(text: str) -> str:
    """The same spec, badly laid out: lines indented oddly, spaces squeezed, blank lines
    tripled, comments pushed right."""
    lines = []
    for i, line in enumerate(text.split("\n")):
        code, sep, comment = line.partition("#") if '"' not in line else (line, "", "")
        code = re.sub(r"\s*([=,|(){}])\s*", r"\1", code.strip())
        lines.append(" " * (i % 5) + code + ("   " + sep + comment if sep else ""))
    return "\n".join(lines).replace("\n \n", "\n\n").replace("\n\n", "\n\n\n\n") + "\n\n"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_fmt_write(path, tmp_path, capsys):
    target = tmp_path / path.name
    target.write_text(_ugly(path.read_text(encoding="utf-8")), encoding="utf-8")
    assert parse_file(target) == parse_file(path)
    assert main(["fmt", "--check", str(target)]) == 1
    assert "not in canonical form" in capsys.readouterr().err
    assert main(["fmt", "-w", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")
    assert main(["fmt", "--check", str(target)]) == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_fmt_cli_reports_syntax_errors(tmp_path, capsys):
    bad = tmp_path / "bad.fg"
    bad.write_text("network {\n", encoding="utf-8")
    assert main(["fmt", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "E001" in err and "Traceback" not in err


def test_fmt_cli_goes_on_after_a_bad_file(tmp_path, capsys):
    """Each unparsable file is reported; the others are still formatted (exit 1 at the end)."""
    bad1, bad2 = tmp_path / "bad1.fg", tmp_path / "bad2.fg"
    bad1.write_text("network {\n", encoding="utf-8")
    bad2.write_text("spec 'x'\n", encoding="utf-8")
    ugly = tmp_path / SPECS[0].name
    ugly.write_text(_ugly(SPECS[0].read_text(encoding="utf-8")), encoding="utf-8")
    assert main(["fmt", str(bad1), str(ugly), str(bad2), str(tmp_path / "none.fg")]) == 1
    out, err = capsys.readouterr()
    assert out == SPECS[0].read_text(encoding="utf-8")
    assert "bad1.fg:1:10: error[E001]" in err and "bad2.fg:1:6: error[E003]" in err
    assert "none.fg: no such file" in err and "Traceback" not in err
    assert main(["fmt", "-w", str(bad1), str(ugly)]) == 1
    assert ugly.read_text(encoding="utf-8") == SPECS[0].read_text(encoding="utf-8")


# --- layout --------------------------------------------------------------------------


def test_long_pipes_break_before_bars():
    spec = parse(
        "block b(w, g) {\n"
        "  out in | group_linear(w, groups = g) | layernorm(groups = g) | perturb | add(in) "
        "| relu | dense(w) | layernorm | relu\n}\n")
    out = format_spec(spec)
    lines = out.splitlines()[1:-1]
    assert len(lines) > 1
    assert all(len(l) <= WIDTH for l in lines)
    bar = lines[0].index("|")
    for cont in lines[1:]:
        assert cont.index("|") == bar and cont[:bar].strip() == ""


def test_short_things_stay_on_one_line():
    out = format_spec(parse("network{out x|f|g}train{epochs=1}"))
    assert out == "network {\n  out x | f | g\n}\n\ntrain {\n  epochs = 1\n}\n"


def test_item_spacing():
    text = ('spec "t"\ninput x = vector(4), classes = 2\nconst A = 1\nconst B = 2\n'
            "head h = linear(2)\nhead g = linear(2)\nnetwork {\n  out x\n}\n"
            "loss a = h on output\nloss b = g on output\n")
    out = check_text(text)
    assert out == ('spec "t"\n\ninput x = vector(4), classes = 2\n\nconst A = 1\nconst B = 2\n\n'
                   "head h = linear(2)\nhead g = linear(2)\n\nnetwork {\n  out x\n}\n\n"
                   "loss a = h on output\nloss b = g on output\n")
    # groups written apart stay apart
    assert "const A = 1\n\nconst B = 2" in check_text("const A = 1\n\n\n\nconst B = 2\n")


def test_without_source_consts_group():
    spec = parse("const A = 1\nconst B = 2\nhead h = f\n")
    bare = dataclasses.replace(spec, source="")
    assert format_spec(bare) == "const A = 1\nconst B = 2\n\nhead h = f\n"


def test_empty_braces():
    assert check_text("network { }\ntrain {}\nblock b() {}\n") == \
        "network {}\n\ntrain {}\n\nblock b() {}\n"


@pytest.mark.parametrize("text,expected", [
    ("const A = 1e-4", "const A = 0.0001"),
    ("const A = 1.0", "const A = 1.0"),
    ("const A = 1.", "const A = 1.0"),
    ("const A = .5", "const A = 0.5"),
    ("const A = 1e-5", "const A = 1e-5"),
    ("const A = 2E+22", "const A = 2e22"),
    ("const A = 1e999", "const A = 1e999"),
    ("const A = -1e999", "const A = -1e999"),
    ("const A = 007", "const A = 7"),
    ("const A = -3", "const A = -3"),
    ("const A = 123456789012345678901234567890", "const A = 123456789012345678901234567890"),
    ("const A = (1 + 2) * 3", "const A = (1 + 2) * 3"),
    ("const A = 1 + (2 + 3)", "const A = 1 + (2 + 3)"),
    ("const A = (1 + 2) + 3", "const A = 1 + 2 + 3"),
    ("const A = 8 / (4 / 2)", "const A = 8 / (4 / 2)"),
    ("const A = 8 / 4 * 2", "const A = 8 / 4 * 2"),
    ("const A = 8 / (4 * 2)", "const A = 8 / (4 * 2)"),
    ("const A = 1 + 2 * 3", "const A = 1 + 2 * 3"),
    ("const A = ((x))", "const A = x"),
    ('const A = "a\\"b\\\\c#d"', 'const A = "a\\"b\\\\c#d"'),
    ("const A = f(k=1,2,[ ],[a,true,false])", "const A = f(2, [], [a, true, false], k = 1)"),
    ("const A = f()", "const A = f()"),
    ("head h() = x", "head h = x"),
    ("loss l = h() on [a, b], kind=xent", "loss l = h() on [a, b], kind = xent"),
    ("network{out x|m(1)*3|n*2}", "network {\n  out x | m(1) * 3 | n * 2\n}"),
])
def test_values(text, expected):
    assert check_text(text + "\n") == expected + "\n"


def test_number_types_survive():
    spec = parse("const A = 1.0\nconst B = 1\nconst C = 1e3\n")
    again = parse(format_spec(spec))
    assert [type(c.value.value) for c in again.items] == [float, int, float]


# --- comments ------------------------------------------------------------------------


WEIRD = '''# header

spec "x # not a comment"   # title
input x = image(28,28,1),classes=10 # in
const A=1 # a
# before B
const B = [1,   # in list
  2,
  # inside list
  3]



block b(w,  # param
   g) {  # open
  # lead h

  h = in | dense(w)   # after dense
     # before relu
     | relu | layernorm(groups=g) # ln
  out h |  # bar
   relu  # last
  # closing 1

  # closing 2
}  # end block
network { out x | flatten | b(4, 2) * 2 }  # one-line
head r = linear(classes) # head t
  # between stages of a head
  | relu
loss final = r on output
train { # t open
  epochs = 1 # e
  # lonely
}
# eof 1

# eof 2
'''


def test_comments_everywhere():
    out = check_text(WEIRD)
    assert out.startswith("# header\n\nspec ")
    assert '  h = in | dense(w)  # after dense\n' in out
    assert "         # before relu\n         | relu | layernorm(groups = g)  # ln\n" in out
    assert "train {  # t open\n  epochs = 1  # e\n  # lonely\n}\n" in out
    assert "}  # end block\n" in out
    assert out.endswith("}\n# eof 1\n\n# eof 2\n")


def test_comment_blocks_keep_their_blank_lines():
    text = "# title\n\n# about x\nconst X = 1\n\ntrain {\n  # one\n\n  epochs = 1\n\n  seed = 2\n}\n"
    assert check_text(text) == text


def test_only_comments():
    with pytest.raises(SpecError, match="E004"):
        parse("# a\n\n# b\n")
    assert format_spec(S.SpecFile((), "<c>", "# a\n\n# b\n")) == "# a\n\n# b\n"
    assert format_spec(S.SpecFile(())) == ""


def test_crlf_and_tabs():
    out = check_text("const A = 1\t# a\r\nnetwork {\r\n\tout x # b\r\n}\r\n")
    assert out == "const A = 1  # a\n\nnetwork {\n  out x  # b\n}\n"


# Places where a comment can go in the corpus: at the end of any line, or on a line of
# its own between any two lines.
@st.composite
def commented_spec(draw):
    text = draw(st.sampled_from(ALL)).read_text(encoding="utf-8")
    lines = text.split("\n")
    n = len(lines)
    ends = draw(st.sets(st.integers(0, n - 1), max_size=8))
    between = draw(st.sets(st.integers(0, n), max_size=8))
    words = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                  blacklist_characters="\n"), max_size=12)
    out = []
    for i, line in enumerate(lines):
        if i in between:
            out.append(" " * draw(st.integers(0, 6)) + "#" + draw(words))
        out.append(line + (f" #{draw(words)}" if i in ends and line.strip() else ""))
    if n in between:
        out.append("#" + draw(words))
    return "\n".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commented_spec())
def test_comments_survive_anywhere(text):
    check_text(text)


# --- values --------------------------------------------------------------------------

KEYWORDS = {"spec", "input", "const", "block", "head", "network", "loss", "on", "out",
            "algorithm", "train", "group", "true", "false"}
names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,5}(-[A-Za-z0-9_]{1,3}){0,2}\Z").filter(
    lambda s: s not in KEYWORDS)
numbers = st.one_of(st.integers(-10**30, 10**30),
                    st.floats(allow_nan=False, allow_infinity=True))
atoms = st.one_of(numbers.map(S.Number), names.map(S.Name))


def _binops(children):
    return st.builds(S.BinOp, st.sampled_from("+*/"), children, children)


arith = st.recursive(atoms, _binops, max_leaves=8)
values = st.recursive(
    st.one_of(arith, st.text(st.characters(blacklist_characters="\n",
                                           blacklist_categories=("Cs",))).map(S.String),
              st.booleans().map(S.Bool)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: S.List(tuple(xs))),
        st.builds(lambda f, a, k: S.Call(f, tuple(a), tuple(S.Kwarg(n, v) for n, v in k)),
                  names, st.lists(inner, max_size=3),
                  st.lists(st.tuples(names, inner), max_size=2))),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(values)
def test_values_round_trip(v):
    spec = S.SpecFile((S.ConstDecl("A", v),))
    text = format_spec(spec)
    assert text == f"const A = {format_value(v)}\n"
    assert same_tree(parse(text), spec), text
