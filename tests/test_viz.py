"""`fgc viz`: DOT text for every spec under every algorithm, and rendering to files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fgc.tools import viz
from fgc.tools.cli import main
from fgc.front.config import presets
from fgc.errors import FgError, SpecError
from fgc.plan.program import load, loads

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.fg"))
M816 = ROOT / "specs" / "mixer-m-8-16.fg"
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` is not installed")


_PROGRAMS: dict = {}


def program_of(spec: Path):
    """The loaded spec, once per session (collection and the tests share it)."""
    if spec not in _PROGRAMS:
        _PROGRAMS[spec] = load(spec)
    return _PROGRAMS[spec]


def _combos():
    for spec in SPECS:
        for algo in sorted(set(presets()) | set(program_of(spec).algorithms)):
            yield pytest.param(spec, algo, id=f"{spec.stem}-{algo}")


def plan_of(spec: Path, algo: str | None = None):
    return program_of(spec).plan(algo)


def drawable_plan(spec: Path, algo: str):
    """The plan to draw, or None where a projection preset cannot read its target: a
    contrastive spec's readout starts with its own `stopgrad`, so the global target of
    `guess-*` is cut off every block, and the spec is refused with E511 (asserted), not drawn."""
    try:
        return plan_of(spec, algo)
    except SpecError as e:
        if presets().get(algo) is None or presets()[algo].estimator.kind != "project":
            raise
        assert set(e.codes) == {"E511"} and "stopgrad" in str(e), e
        return None


def structure(dot: str) -> str:
    """The DOT text with quoted strings and HTML labels blanked out."""
    out, i, n = [], 0, len(dot)
    while i < n:
        c = dot[i]
        if c == '"':
            i += 1
            while i < n and dot[i] != '"':
                i += 2 if dot[i] == "\\" else 1
            assert i < n, "unterminated string"
            out.append('""')
            i += 1
        elif c == "<":
            depth = 0
            while i < n:
                if dot[i] == "<":
                    depth += 1
                elif dot[i] == ">":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            assert i < n, "unterminated HTML label"
            out.append("<>")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def assert_valid(dot: str) -> None:
    s = structure(dot)
    assert s.lstrip().startswith("digraph")
    depth = 0
    for c in s:
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            assert depth >= 0, "unbalanced brackets"
    assert depth == 0, "unbalanced brackets"
    assert s.count("{") == s.count("}") and s.count("[") == s.count("]")


def assert_renders(dot: str) -> None:
    """Graphviz itself accepts the text (needs `dot`)."""
    res = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert b"<svg" in res.stdout
    assert b"Warning" not in res.stderr, res.stderr.decode()


def lines_with(dot: str, needle: str) -> list[str]:
    return [l for l in dot.splitlines() if needle in l]


def stop_edges(dot: str, why: str | None = None) -> list[str]:
    cls = f'class="stop stop-{why}"' if why else 'class="stop '
    return [l for l in dot.splitlines() if "->" in l and cls in l]


# --- every spec × every algorithm ---------------------------------------------------------

def _render_combos():
    """Per spec, its own algorithms and the first preset of each estimator family (backprop,
    forward, feedback, projection; greedy or not): Graphviz laying out all 17 presets of
    every spec took minutes, and the DOT of every combination is checked below anyway."""
    for spec in SPECS:
        seen, picked = set(), set(program_of(spec).algorithms) - set(presets())
        for algo in sorted(presets()):
            family = (presets()[algo].estimator.kind, presets()[algo].greedy)
            if family not in seen:
                seen.add(family)
                picked.add(algo)
        for algo in sorted(picked):
            yield pytest.param(spec, algo, id=f"{spec.stem}-{algo}")


@needs_dot
@pytest.mark.parametrize("spec,algo", list(_render_combos()))
def test_graphviz_accepts_dot(spec, algo):
    plan = drawable_plan(spec, algo)
    if plan is not None:
        assert_renders(viz.to_dot(plan))


@pytest.mark.parametrize("spec,algo", list(_combos()))
def test_dot_is_valid_and_complete(spec, algo):
    plan = drawable_plan(spec, algo)
    if plan is None:
        return
    g = plan.graph
    dot = viz.to_dot(plan)
    assert_valid(dot)

    # every block instance is a cluster with its name
    for b in g.blocks:
        assert f'subgraph "cluster_{b}"' in dot
        assert f"<B>{b}</B>" in dot
    # the legend and the title
    assert "subgraph cluster_legend" in dot and "<B>Legend</B>" in dot
    for name in plan.groups:
        assert f"<B>{name}</B>" in dot
    assert f"algorithm <B>{algo}</B>" in dot
    assert f"{g.num_params():,} parameters" in dot

    # stop-gradient edges exactly where the plan stops gradients
    stops = [(u, v) for u, v in g.g.edges if g.edge(u, v).stop_gradient]
    assert len(stop_edges(dot)) == len(stops)
    for why in ("greedy", "readout", "spec"):
        n = sum(1 for u, v in stops if (g.edge(u, v).why or "spec") == why)
        assert len(stop_edges(dot, why)) == n, why
    if plan.algorithm.greedy and len(g.blocks) > 1:
        assert stop_edges(dot, "greedy")
    if not plan.algorithm.greedy:
        assert not stop_edges(dot, "greedy")

    # perturbation sites: live only where activities are perturbed
    sites = [n for n in g.g if g.node(n).kind == "perturb"]
    on = lines_with(dot, 'class="site site-on"')
    off = lines_with(dot, 'class="site site-off"')
    assert len(on) + len(off) == len(sites)
    # a site is live when a layer it serves learns by activity perturbation (a group of its
    # own may say backprop: the last block of the ResNet specs)
    owners = plan.credit_map().owners
    live = [s for s in sites if any(
        plan.estimator_of(plan.assignment[o]).perturb == "activity" for o in owners.get(s, ()))]
    est = plan.algorithm.estimator
    if est.kind == "forward" and est.perturb == "activity":
        assert len(on) == len(live) and live
        assert all("activity noise" in l for l in on)
    else:  # no spec here gives a group its own activity estimator
        assert not on and not live and len(off) == len(sites)

    # weight noise marks exactly the layers learned by forward(perturb = weights)
    wn = [n for n, grp in plan.assignment.items()
          if plan.estimator_of(grp).kind == "forward" and plan.estimator_of(grp).perturb == "weights"]
    drawn = {f"head:{g.node(n).loss}" if g.node(n).role == "head" else n for n in wn}
    assert len(lines_with(dot, 'class="w-noise"')) == len(drawn)

    # one loss node per loss instance, the final one distinct
    for loss in g.losses.values():
        assert quote_id(loss.id) in dot
    finals = [l for l in g.losses.values() if l.final]
    assert len(lines_with(dot, "doubleoctagon")) >= len(finals)


def quote_id(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the M/8/16 picture -----------------------------------------------------------------------

def test_m816_losses_replicate_over_patches_and_groups():
    dot = viz.to_dot(plan_of(M816, "lg-fg-a"))
    assert dot.count("×64 patches ×16 groups") == 4  # one per block
    assert dot.count("= 1024 replicas") == 4
    assert "local loss (xent)" in dot and "final loss (xent)" in dot
    assert "layernorm/16<BR/>→ mean(patches)<BR/>→ linear 10" in dot  # the head, compact
    assert "group_linear 512 /16 groups" in dot
    assert "64×512" in dot and "262,656 params" in dot
    assert "activity noise:" in dot and "gaussian, K=1" in dot
    assert "918,770 parameters" in dot
    # what each loss trains under greedy local learning
    assert "trains stem.1 + head" in dot and "trains mixer.3 + head" in dot
    assert "trains its head only" in dot  # the readout


def test_m816_stop_gradients_by_algorithm():
    lg = viz.to_dot(plan_of(M816, "lg-fg-a"))
    assert len(stop_edges(lg, "greedy")) == 6  # main path and residual into mixer.1..3
    assert len(stop_edges(lg, "readout")) == 1  # the final readout
    assert "⊘ greedy" in lg and "⊘ readout" in lg
    bp = viz.to_dot(plan_of(M816, "bp"))
    assert not stop_edges(bp, "greedy")
    assert len(stop_edges(bp, "readout")) == 4  # the local heads only read out
    assert "trains stem.1 … mixer.3 + head" in bp  # the final loss trains everything
    lbp = viz.to_dot(plan_of(M816, "l-bp"))
    assert not stop_edges(lbp, "greedy")
    assert "trains stem.1 … mixer.2 + head" in lbp


def test_m816_noise_by_algorithm():
    for algo in ("lg-fg-a", "fg-a"):
        dot = viz.to_dot(plan_of(M816, algo))
        assert len(lines_with(dot, "site-on")) == 11  # 2 in stem.1, 3 per mixer
        assert not lines_with(dot, 'class="w-noise"')
    for algo in ("bp", "l-bp", "lg-bp", "fg-w", "lg-fg-w"):
        dot = viz.to_dot(plan_of(M816, algo))
        assert not lines_with(dot, "site-on"), algo
        assert len(lines_with(dot, "site-off")) == 11
    dot = viz.to_dot(plan_of(M816, "fg-w"))
    assert len(lines_with(dot, 'class="w-noise"')) == 11  # every backbone layer with weights
    assert "⚡ W-noise" in dot


def test_group_estimators_in_legend():
    dot = viz.to_dot(plan_of(M816, "lg-fg-a"))
    legend = dot[dot.index("subgraph cluster_legend"):]
    assert "forward gradient, activity noise: gaussian, K=1" in legend
    assert "lr ×0.1" in legend and "lr ×1" in legend
    cnn = viz.to_dot(plan_of(ROOT / "specs" / "cnn.fg"))
    assert "aux_heads" in cnn and "adam(learning_rate=0.001)" in cnn


# --- escaping and unusual specs --------------------------------------------------------

ODD = r'''
spec "Odd <b>\"quoted\" & back\\slash {braces} [x]"

input x = image(8, 8, 1), classes = 10

block layer(width) {
  out in | dense(width) | layernorm | perturb | relu
}

block sg(width) {
  out in | stopgrad | dense(width, bias = false) | layernorm | perturb | tanh
}

head probe = linear(classes)

network {
  out x | flatten | layer(16) | sg(16) | layer(16) * 6
}

loss local = probe on blocks
loss final = probe on output

group front {
  params = sg
  estimator = forward(perturb = weights, noise = rademacher, tangents = 2)
  lr_scale = 0.5
}
'''


# (a projection's target is cut off `layer.1` by the stopgrad there: E511, not a drawing)
@pytest.mark.parametrize("algo", sorted(a for a, al in presets().items()
                                        if al.estimator.kind != "project"))
def test_escaping_stopgrad_groups_and_rows(algo):
    plan = loads(ODD, "odd.fg").plan(algo)
    dot = viz.to_dot(plan)
    assert_valid(dot)
    if HAVE_DOT:
        assert_renders(dot)
    assert "Odd &lt;b&gt;&quot;quoted&quot; &amp; back\\slash &#123;braces&#125; [x]" in dot
    assert len(stop_edges(dot, "spec")) == 1  # the spec's own stopgrad
    # 8 blocks: the seventh starts a second row, reached through connectors
    assert 'class="connector"' in dot
    # the group's own estimator shows whatever the algorithm
    assert "weight noise: rademacher, K=2" in dot
    assert len(lines_with(dot, 'class="w-noise"')) >= 1


def test_escape_helpers():
    assert viz.quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert viz.html('<a & "b">\n{}') == "&lt;a &amp; &quot;b&quot;&gt;<BR/>&#123;&#125;"


def test_op_labels():
    g = plan_of(M816).graph
    labels = {viz.op_label(g.node(n)) for n in g.g}
    assert {"dense 512", "group_linear 512 /16 groups", "token_mix 64→64", "layernorm/16",
            "patchify 8×8", "mean(patches)", "linear 10 (init=zeros)", "input x"} <= labels
    cnn = plan_of(ROOT / "specs" / "cnn.fg").graph
    labels = {viz.op_label(cnn.node(n)) for n in cnn.g}
    assert {"conv 64 3×3", "conv 128 3×3 /2", "groupnorm/8", "batchnorm"} <= labels


# --- files ---------------------------------------------------------------------------------

def no_dot(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == "dot" else real(cmd, *a, **k))


def test_render_dot_without_graphviz(tmp_path, monkeypatch):
    no_dot(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "g.dot"
    viz.render(plan_of(M816), out)
    text = out.read_text(encoding="utf-8")
    assert text == viz.to_dot(plan_of(M816))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]


@pytest.mark.parametrize("ext", [".svg", ".png"])
def test_render_image_without_graphviz_says_how_to_install(tmp_path, monkeypatch, ext):
    no_dot(monkeypatch)
    out = tmp_path / f"g{ext}"
    with pytest.raises(FgError) as e:
        viz.render(plan_of(M816), out)
    msg = str(e.value)
    assert "Graphviz" in msg
    for how in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert how in msg
    assert "-o g.dot" in msg
    assert not out.exists() and not list(tmp_path.iterdir())


def test_render_unknown_extension(tmp_path):
    with pytest.raises(FgError) as e:
        viz.render(plan_of(M816), tmp_path / "g.jpeg")
    msg = str(e.value)
    assert ".jpeg" in msg
    for ext in (".dot", ".svg", ".png"):
        assert ext in msg
    assert not list(tmp_path.iterdir())


def test_failed_render_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "g.svg"
    out.write_text("old picture")
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: "/usr/bin/dot")

    def broken(*a, **k):
        return subprocess.CompletedProcess(a, 1, b"", b"Error: syntax error in line 1")

    monkeypatch.setattr(subprocess, "run", broken)
    with pytest.raises(FgError, match="syntax error"):
        viz.render(plan_of(M816), out)
    assert out.read_text() == "old picture"  # untouched, no half file
    assert [p.name for p in tmp_path.iterdir()] == ["g.svg"]


def test_write_error_is_an_fg_error(tmp_path):
    with pytest.raises(FgError, match="cannot write"):
        viz.render(plan_of(M816), tmp_path / "missing" / "g.dot")


@needs_dot
@pytest.mark.parametrize("ext,magic", [(".svg", b"<svg"), (".png", b"\x89PNG")])
def test_render_image(tmp_path, ext, magic):
    out = tmp_path / f"g{ext}"
    viz.render(plan_of(M816, "lg-fg-a"), out)
    data = out.read_bytes()
    assert magic in data[:400]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    if ext == ".svg":
        text = data.decode()
        assert "LocalMixer M/8/16" in text and "1024 replicas" in text


# --- the command ------------------------------------------------------------------------------

@needs_dot
def test_cli_viz_svg(tmp_path, capsys):
    out = tmp_path / "g.svg"
    assert main(["viz", str(M816), "-o", str(out)]) == 0
    assert out.read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
    assert "wrote" in capsys.readouterr().out


def test_cli_viz_dot_with_algorithm(tmp_path):
    out = tmp_path / "g.dot"
    assert main(["viz", str(M816), "-o", str(out), "--algorithm", "bp"]) == 0
    assert "algorithm <B>bp</B>" in out.read_text(encoding="utf-8")


def test_cli_viz_without_graphviz(tmp_path, monkeypatch, capsys):
    no_dot(monkeypatch)
    assert main(["viz", str(M816), "-o", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "Traceback" not in err
