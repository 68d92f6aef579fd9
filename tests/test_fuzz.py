"""Fuzzing the front end: whatever the input, fgc answers with an FgError, never a crash.

Mutated corpus specs, truncated specs and random bytes go through parse, build, check
and plan; inputs that parse also go through the formatter, which must round-trip them.
Run longer with e.g. ``FGC_FUZZ_EXAMPLES=3000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import zlib
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgc.tools.cli import main
from fgc.errors import FgError, SpecError
from fgc.front.fmt import format_spec
from fgc.graph.ops import OPS
from fgc.front.parse import MAX_SPEC_BYTES, decode, parse
from fgc.plan.program import load, loads

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted((ROOT / "specs").glob("*.fg")) + [ROOT / "grammar" / "algorithms.fg"]
TEXTS = [p.read_text(encoding="utf-8") for p in CORPUS]


def _sub(name: str, old: str, new: str) -> str:
    text = (ROOT / "specs" / name).read_text(encoding="utf-8")
    assert old in text
    return text.replace(old, new)

N = int(os.environ.get("FGC_FUZZ_EXAMPLES", "0"))


def fuzz(default: int):
    # Long runs flag slow inputs (a hang is a bug too); short runs never flake on time.
    return settings(max_examples=N or default, deadline=5000 if N else None, derandomize=not N,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


TOKENS = ["|", "{", "}", "(", ")", "[", "]", "=", ",", "*", "/", "+", "-", '"', "#", "\n",
          " ", "0", "1", "-1", "3.5", "1e-4", "1e999", "99999999999999999999", "x", "in",
          "out", "blocks", "output", "patches", "groups", "classes", "spec", "input",
          "const", "block", "head", "network", "loss", "on", "algorithm", "train", "group",
          "true", "false", "perturb", "add(in)", "dense(8)", "layernorm(groups = 3)",
          "mean(patches)", "linear(classes)", "patchify(0)", "relu * 2", "stem(C, G) * 0",
          "replicate = [groups]", "groups = 0", "estimator = forward(perturb = activity)",
          "params = heads", "\x00", "\t", "\r", "é", "×", "\\"]


NUMBERS = ["0", "1", "2", "3", "7", "-1", "-8", "0.5", "1.5", "-0.0", "1e999", "1e-9",
           "99999999999999999999"]
WORDS = sorted(OPS) + ["in", "x", "h", "t", "blocks", "output", "patches", "groups", "classes",
                       "zeros", "same", "valid", "true", "false", "local", "global", "forward",
                       "backprop", "activity", "weights", "C", "G", "H", "stem", "mixer",
                       "layer", "readout", "local_head", "aux", "probe", "final", "network"]
VALUES = NUMBERS + WORDS + ['"s"', "[patches, groups]", "[]", "C / 3", "G * 2"]
_NUMBER = re.compile(r"(?<![\w.-])-?\d+(\.\d*)?([eE][-+]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(-[A-Za-z0-9_]+)*")


@st.composite
def stage(draw) -> str:
    """A call of a random op with random arguments, often plausible, often not."""
    op = OPS[draw(st.sampled_from(sorted(OPS)))]
    args = [draw(st.sampled_from(VALUES)) for _ in range(draw(st.integers(0, 2)))]
    names = [a.name for a in op.args] + ["bogus"]
    kwargs = [f"{draw(st.sampled_from(names))} = {draw(st.sampled_from(VALUES))}"
              for _ in range(draw(st.integers(0, 2)))]
    if not args and not kwargs and draw(st.booleans()):
        return op.name
    return f"{op.name}({', '.join(args + kwargs)})"


def _replace_nth(draw, pattern, text, choices) -> str:
    found = list(pattern.finditer(text))
    if not found:
        return text
    m = draw(st.sampled_from(found))
    return text[:m.start()] + draw(st.sampled_from(choices)) + text[m.end():]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 40)))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "chars", "token", "token",
                                   "number", "number", "name", "name", "stage", "stage"]))
        if op == "number":
            text = _replace_nth(draw, _NUMBER, text, NUMBERS)
        elif op == "name":
            text = _replace_nth(draw, _NAME, text, WORDS)
        elif op == "stage":
            bars = [m.end() for m in re.finditer(r"\| ", text)]
            if bars:
                k = draw(st.sampled_from(bars))
                text = text[:k] + draw(stage()) + " | " + text[k:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap":
            k = draw(st.integers(0, n))
            l = draw(st.integers(k, min(n, k + 40)))
            if j <= k:
                text = text[:i] + text[k:l] + text[j:k] + text[i:j] + text[l:]
        elif op == "chars":
            text = text[:i] + draw(st.text(max_size=5)) + text[i:]
        else:
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
    return text


def check_loads(text: str):
    """Loads and plans ``text``; only FgError may escape. Formats what parses."""
    try:
        spec = parse(text, "<fuzz>")
    except SpecError as e:
        assert e.diagnostics
        str(e)
        return None
    out = format_spec(spec)
    again = parse(out, "<fmt>")
    assert again == spec, out
    assert format_spec(again) == out
    try:
        prog = loads(text, "<fuzz>")
    except SpecError as e:
        assert e.diagnostics
        str(e)
        return None
    # The spec's own algorithm and three more, picked by the text: planning all 17 presets of
    # every mutant (a ResNet's credit maps included) cost minutes; test_language plans every
    # preset on every corpus spec.
    names = sorted(prog.algorithms)
    pick = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    for name in {None, *(names[(pick + i * 7) % len(names)] for i in range(3))}:
        try:
            prog.plan(name)
        except SpecError as e:
            assert e.diagnostics and str(e)
    return prog


@fuzz(80)
@given(mutated())
def test_mutated_specs(text):
    check_loads(text)


@fuzz(150)
@given(st.sampled_from(TEXTS), st.data())
def test_truncated_specs(text, data):
    cut = data.draw(st.integers(0, len(text)))
    check_loads(text[:cut])


@fuzz(200)
@given(st.one_of(st.binary(max_size=300),
                 st.sampled_from(TEXTS).map(lambda t: t.encode("utf-8")).flatmap(
                     lambda b: st.tuples(st.integers(0, len(b)), st.binary(min_size=1, max_size=8))
                     .map(lambda ix: b[:ix[0]] + ix[1] + b[ix[0]:]))))
def test_random_bytes(data):
    try:
        text = decode(data, "<bytes>")
    except SpecError as e:
        assert e.codes[0] in ("E004", "E005", "E006", "E007")
        str(e)
        return
    check_loads(text)


@fuzz(40)
@given(data=st.one_of(mutated().map(lambda t: t.encode("utf-8", "surrogatepass")),
                      st.binary(max_size=200)))
def test_cli_check_never_crashes(data, capsys):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.fg"
        path.write_bytes(data)
        rc = main(["check", str(path)])
        out, err = capsys.readouterr()
        assert rc in (0, 1)
        assert "Traceback" not in out + err
        assert (rc == 1) == bool(err)


@pytest.mark.parametrize("text", [
    "const A = " + "+".join(["1"] * 5000),
    "const A = " + "[" * 3000 + "]" * 3000,
    "const A = " + "f(" * 3000 + ")" * 3000,
    "const A = " + "(" * 3000 + "1" + ")" * 3000,
    "network {" + " out x |" * 2000,
    "{" * 10000,
    "#" * 100000,
    "const A = 1e999999\nconst B = -0.0\nconst C = 99999999999999999999999 / 0.0",
    "input x = image(1e999, -1, 0.5), classes = 1e9",
    "input x = vector(99999999999999999999), classes = 2\nhead h = linear(classes)\n"
    "network {\n  out x | dense(99999999999999999999)\n}\nloss f = h on output\n",
    # each of these once hung or crashed fgc
    _sub("mixer-m-8-16.fg", "mixer(C, G) * 3", "mixer(C, G) * 99999999999999999999"),
    _sub("mixer-m-8-16.fg", "const C = 512", "const C = 99999999999999999999999"),
    _sub("mixer-m-8-16.fg", "const C = 512", "const C = " + "9" * 5000),
    _sub("mixer-m-8-16.fg", "mixer(C, G) * 3", "mixer(C, G) * " + "9" * 5000),
    _sub("mixer-m-8-16.fg", "const C = 512", "const C = " + "*".join(["9" * 99] * 50)),
    _sub("cnn.fg", "stride = 2", "stride = 0"),
    _sub("cnn.fg", "kernel = 1", "kernel = 0"),
    _sub("cnn.fg", "global_avgpool |", "maxpool(size = 0) |"),
])
def test_pathological_inputs(text):
    check_loads(text)


def test_huge_file_is_one_diagnostic(tmp_path, capsys):
    path = tmp_path / "huge.fg"
    path.write_bytes(b"const A = 1\n" * (MAX_SPEC_BYTES // 12 + 10))
    with pytest.raises(SpecError) as e:
        load(path)
    assert e.value.codes == ["E005"]
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("error[") == 1 and len(err) < 300
