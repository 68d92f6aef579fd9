"""Every bad input a new user tried (issue 10) gets correct behaviour or one clear line.

The run-folder and checkpoint findings are in test_resume.py; these are the messages,
the sizes and the commands other than `fgc train`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgc.errors import Diagnostic, SpecError, Span
from fgc.graph.build import suggest
from fgc.plan.program import loads
from fgc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
input x = vector(8), classes = 2
block layer(w) {
  out in | dense(w) | layernorm | perturb | relu
}
head probe = linear(classes)
head readout = linear(classes)
network {
  out x | layer(8) * 3
}
loss local = probe on blocks
loss final = readout on output
train {
  batch_size = 8
  algorithm = lg-fg-a
}
"""


def error(text: str, plan: bool = False) -> SpecError:
    with pytest.raises(SpecError) as e:
        prog = loads(text, "bad.fg")
        if plan:
            prog.plan()
    return e.value


def test_base_is_valid():
    loads(BASE, "ok.fg").plan()


# --- messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["groups", "training", "trainer", "algorithms"])
def test_a_name_starting_with_a_keyword_is_one_name(name):
    e = error(BASE.replace("  batch_size = 8", f"  {name} = 8"))
    assert e.codes == ["E203"] and f"unknown train setting `{name}`" in str(e)


def test_one_mistake_in_a_shared_head_is_reported_once():
    e = error(BASE.replace("head probe = linear(classes)", "head probe = lineer(classes)"))
    assert len(e.diagnostics) == 1, str(e)


def test_suggestions_never_repeat_the_word():
    assert suggest("backprop", ["backprop", "forward"]) is None
    e = error(BASE.replace("  algorithm = lg-fg-a", "  algorithm = mine\n}\nalgorithm mine {\n"
                           "  target = local\n  estimator = backprop(feedback = random)"))
    assert e.codes == ["E205"], str(e)  # not also "unknown algorithm `mine`" (a cascade)
    assert "`backprop` takes no arguments" in str(e) and "did you mean" not in str(e)


def test_the_cause_comes_without_its_cascade():
    e = error(BASE.replace("| perturb | relu", "| perturb | rleu"))
    assert e.codes == ["E201"], str(e)
    assert "did you mean `relu`?" in str(e)


def test_a_flat_sum_is_not_nesting():
    terms = " + ".join(["1"] * 99)
    loads(BASE.replace("layer(8) * 3", f"layer({terms}) * 3"), "ok.fg")  # a width of 99
    e = error(BASE.replace("network {", "const W = " + " + ".join(["1"] * 201) + "\nnetwork {"))
    assert "a sum of more than 200 terms" in str(e) and "nested" not in str(e)


def test_e507_names_the_group_whose_estimator_needs_noise():
    text = BASE.replace("| layernorm | perturb | relu", "| layernorm | relu").replace(
        "network {\n  out x | layer(8) * 3",
        "block site(w) {\n  out in | dense(w) | layernorm | perturb | relu\n}\n"
        "network {\n  out x | layer(8) | site(8)").replace(
        "  algorithm = lg-fg-a", "  algorithm = lg-bp\n}\ngroup fwd {\n  params = layer\n"
        "  estimator = forward(perturb = activity)")
    e = error(text, plan=True)
    assert e.codes == ["E507"] and "so group `fwd` has no activity noise" in str(e), str(e)


def test_a_long_line_is_shown_as_a_window():
    e = error(BASE.replace("layer(8) * 3", "layer(" + "9" * 5000 + ") * 3"))
    lines = str(e).splitlines()
    assert "a number of 5,000 characters" in lines[0]
    assert all(len(l) < 130 for l in lines), [len(l) for l in lines]
    assert lines[2].count("^") < 110 and lines[1].index("9") == lines[2].index("^")
    d = Diagnostic("E002", "x", Span("p", 1, 300, 1, 305))
    src, caret = d.render("a" * 299 + "bcdef" + "g" * 400).splitlines()[1:3]
    assert src[caret.index("^"):][:5] == "bcdef" and caret.count("^") == 5


def test_learning_rate_must_be_positive():
    e = error(BASE.replace("  batch_size = 8", "  optimizer = sgd(learning_rate = -0.1)"))
    assert e.codes == ["E206"] and "learning_rate must be a number above 0, got -0.1" in str(e)


@pytest.mark.parametrize("norm", ["layernorm(eps = -1.0)", "layernorm(eps = 0)",
                                  "batchnorm(eps = -1)"])
def test_norm_eps_must_be_positive(norm):
    e = error(BASE.replace("| layernorm |", f"| {norm} |"))
    assert e.codes == ["E303"] and "eps must be positive" in str(e)


# --- sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (("layer(8) * 3", "layer(1000000000000) * 3"), "of parameters"),
    (("classes = 2", "classes = 1000000000000"), "of parameters"),
    (("  algorithm = lg-fg-a", "  algorithm = many\n}\nalgorithm many {\n  target = local\n"
      "  greedy = true\n  estimator = forward(perturb = activity, tangents = 1000000000000)"),
     "of activations"),
    (("batch_size = 8", "batch_size = 100000000000"), "of activations"),
])
def test_absurd_sizes_are_refused_with_the_numbers(edit, message):
    e = error(BASE.replace(*edit), plan=True)
    assert e.codes == ["E305"], str(e)
    assert message in str(e) and "B of" in str(e) and "refuses more than 1 TB" in str(e)
    assert str(e).startswith("bad.fg:")


def test_the_command_line_tangents_are_checked_too(tmp_path):
    from fgc.training.data import synthetic_dataset
    from fgc.training.train import train
    p = tmp_path / "ok.fg"
    p.write_text(BASE)
    data = synthetic_dataset(n_train=16, n_test=8, image_shape=(8,), num_classes=2)
    with pytest.raises(SpecError, match=r"E305.*PB of activations.*with these settings"):
        train(p, out=tmp_path / "run", dataset=data, tangents=10**12, log=lambda _: None)


def test_sizes_are_human():
    from fgc.graph.sizes import human
    assert [human(n) for n in (12, 1_500, 36e12, 4e24, 2e30)] == [
        "12 bytes", "1.5 KB", "36 TB", "4 YB", "2,000,000 YB"]


# --- commands ------------------------------------------------------------------------------

def test_check_reads_no_more_than_the_limit(capsys):
    assert main(["check", "/dev/zero"]) == 1
    assert "error[E005]: file is over 1,000,000 bytes" in capsys.readouterr().err


def test_fmt_does_not_push_a_spec_over_the_size_limit(tmp_path, capsys, monkeypatch):
    import fgc.front.parse as P
    p = tmp_path / "s.fg"
    p.write_text(BASE.replace(" = ", "=").replace(" | ", "|"))
    monkeypatch.setattr(P, "MAX_SPEC_BYTES", len(p.read_bytes()) + 5)
    before = p.read_bytes()
    assert main(["fmt", "-w", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}: in canonical form the spec would be" in err and "left as it is" in err
    assert p.read_bytes() == before


def test_plot_under_a_file_says_so(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "a-file" / "p.png")]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "mkdir" not in err


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`fgc check --summary X | head -1`: no BrokenPipeError."""
    spec = tmp_path / "ok.fg"
    spec.write_text(BASE)
    p = subprocess.Popen([sys.executable, "-m", "fgc.tools.cli", "check", "--summary",
                          *[str(spec)] * 50], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    p.stdout.close()  # the reader is gone before anything was written
    with p.stderr:
        err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert p.returncode == 141
