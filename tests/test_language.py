"""The language front end on the real spec corpus: counts, plans, IR round trips."""

import functools
import re
from pathlib import Path

import pytest

from fgc.tools.cli import main
from fgc.front.config import Estimator, presets
from fgc.errors import FgError, LoweringError, SpecError
from fgc.graph.ir import Graph
from fgc.plan.program import load, loads

SPECS = Path(__file__).resolve().parent.parent / "specs"
ALL_SPECS = sorted(SPECS.glob("*.fg"))

# REFERENCE §2 / Ren et al. Table 2, as the released code counts them.
EXPECTED_PARAMS = {
    "mixer-s-1-1.fg": 271_892,
    "mixer-m-1-16.fg": 429_076,
    "mixer-m-8-16.fg": 918_770,
    "mixer-l-8-64.fg": 13_074_674,
    "mixer-l-32-64.fg": 17_335_796,  # ≈ 17.34M with 100-class heads
}


@pytest.mark.parametrize("name,count", sorted(EXPECTED_PARAMS.items()))
def test_parameter_counts_match_the_paper(name, count):
    assert load(SPECS / name).graph.num_params() == count


def test_corpus_is_complete_and_commented():
    assert {p.name for p in ALL_SPECS} >= set(EXPECTED_PARAMS) | {"mlp.fg", "cnn.fg"}
    for p in ALL_SPECS:
        assert p.read_text().startswith("# "), f"{p.name} must open with a comment"


def test_check_cli_passes_the_corpus(capsys):
    assert main(["check", *map(str, ALL_SPECS)]) == 0
    assert main(["check", "--summary", str(SPECS / "mixer-m-8-16.fg")]) == 0
    out = capsys.readouterr().out
    assert "918,770" in out and "64×512" in out


_load = functools.cache(load)  # plans copy the graph, so one Program serves every preset


def test_presets_are_the_algorithms_file():
    text = (SPECS.parent / "grammar" / "algorithms.fg").read_text(encoding="utf-8")
    assert set(presets()) == set(re.findall(r"^algorithm (\S+) \{", text, re.M)) \
        == {"bp", "l-bp", "lg-bp", "fg-w", "fg-a", "lg-fg-w", "lg-fg-a", "fa", "l-fa", "lg-fa",
            "dfa", "guess-local-a",
            "guess-local-w", "guess-ntk-a", "guess-ntk-w", "guess-random-a", "guess-random-w"}


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.name)
@pytest.mark.parametrize("algo", sorted(presets()))
def test_every_preset_plans_every_spec(spec, algo):
    """Every spec of the corpus plans under every preset whose losses it has (E504-E507)."""
    prog = _load(spec)
    losses = prog.graph.losses.values()
    needs = {"global": any(l.final for l in losses), "local": any(not l.final for l in losses)}
    if presets()[algo].estimator.kind == "project":  # tests/test_projection.py: the rest
        try:
            plan = prog.plan(algo)
        except SpecError as e:  # no final loss, or a block without the aux loss it guesses from
            assert set(e.codes) <= {"E504", "E511"}, e
            return
        g = plan.graph
        assert not any(g.edge(u, v).stop_gradient and g.edge(u, v).why != "spec"
                       for u, v in g.g.edges), "a projection cuts what it needs itself"
        return
    if not needs[presets()[algo].target]:
        with pytest.raises(SpecError) as e:
            prog.plan(algo)
        assert e.value.codes == ["E504" if presets()[algo].target == "global" else "E505"]
        return
    plan = prog.plan(algo)
    g = plan.graph
    stops = {(u, v): g.edge(u, v).why for u, v in g.g.edges if g.edge(u, v).stop_gradient}
    greedy = [e for e, why in stops.items() if why == "greedy"]
    if plan.algorithm.greedy and len(g.blocks) > 1:
        assert greedy, "greedy algorithms stop gradients between blocks"
    if not plan.algorithm.greedy:
        assert not greedy
    for loss in g.losses.values():
        edge = g.edge(loss.source, loss.head_nodes[0])
        trains_backbone = loss.final == (plan.algorithm.target == "global") or (
            loss.also_local and plan.algorithm.target == "local")  # `local = true`
        # a head that starts with its own `stopgrad` (a contrastive spec's readout) never does
        own_stop = g.node(loss.head_nodes[0]).kind == "stopgrad"
        assert edge.stop_gradient != (trains_backbone and not own_stop)


def test_greedy_stops_every_block_boundary():
    g = load(SPECS / "mixer-m-8-16.fg").plan("lg-fg-a").graph
    crossing = [(u, v) for u, v in g.g.edges
                if g.node(u).role == "op" and g.node(v).role == "op"
                and g.node(u).block and g.node(u).block != g.node(v).block]
    # stem.1 → mixer.2 (token_mix and residual add) and so on: 2 edges per boundary.
    assert len(crossing) == 6
    assert all(g.edge(u, v).why == "greedy" for u, v in crossing)


def test_default_parameter_groups():
    plan = load(SPECS / "mixer-m-8-16.fg").plan("lg-fg-a")
    assert set(plan.groups) == {"backbone", "heads", "readout"}
    assert plan.groups["readout"].lr_scale == 0.1
    assert plan.estimator_of("backbone").perturb == "activity"
    assert plan.estimator_of("heads").kind == "backprop"
    assert plan.assignment["mixer.2/dense.4"] == "backbone"
    assert plan.assignment["loss:final@output/linear.2"] == "readout"


def test_user_groups_and_custom_algorithm():
    prog = load(SPECS / "cnn.fg")
    plan = prog.plan()
    assert plan.algorithm.name == "lg-bp"
    assert plan.groups["aux_heads"].optimizer.name == "adam"
    mlp = load(SPECS / "mlp.fg").plan()
    assert mlp.algorithm.estimator.tangents == 4
    assert mlp.algorithm.estimator.noise == "rademacher"


def test_replication_counts():
    g = load(SPECS / "mixer-m-8-16.fg").graph
    local = [l for l in g.losses.values() if not l.final]
    assert len(local) == 4
    assert all((l.patches, l.groups, l.replicas) == (64, 16, 1024) for l in local)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.name)
def test_ir_json_round_trip(spec):
    import json
    g = load(spec).plan().graph
    again = Graph.from_json(json.loads(json.dumps(g.to_json())))
    assert again == g
    assert again.num_params() == g.num_params()


def test_all_diagnostics_at_once():
    src = """
    input x = image(28, 28, 1), classes = 10
    block b(w) { out in | dense(w) | reluu }
    head h = linear(clases)
    network { out x | flatten | b(64) | b(32, 5) }
    loss l = h on blocks
    """
    with pytest.raises(SpecError) as e:
        loads(src, "t.fg")
    codes = e.value.codes
    assert codes.count("E201") >= 2 and "E205" in codes


def test_unknown_algorithm_suggests():
    with pytest.raises(SpecError, match="did you mean `lg-fg-a`"):
        load(SPECS / "mixer-m-8-16.fg").plan("lg-fg-aa")


# --- parameter groups ----------------------------------------------------------------

BASE = """
input x = vector(8), classes = 2
block layer(w) {
  out in | dense(w) | layernorm | perturb | relu
}
head probe = linear(classes)
head readout = linear(classes)
network {
  h = x | dense(8) | layernorm | perturb | relu
  out h | layer(8) * 2
}
"""


def _members(plan, group):
    return sorted(n for n, g in plan.assignment.items() if g == group)


def test_user_head_groups_learn_by_their_exact_gradient():
    """A group of head parameters without an estimator is backprop, whatever the algorithm."""
    for algo in ("lg-fg-a", "fg-w"):
        plan = _load(SPECS / "cnn.fg").plan(algo)
        assert plan.estimator_of("aux_heads") == Estimator("backprop")
        assert plan.estimator_of("readout") == Estimator("backprop")
        assert plan.estimator_of("backbone") == presets()[algo].estimator
        assert plan.groups["aux_heads"].estimator == Estimator("backprop")
        assert plan.groups["aux_heads"].optimizer.name == "adam"


def test_a_group_of_heads_and_backbone_must_be_split():
    src = BASE + "loss local = probe on blocks\nloss final = readout on output\n"
    with pytest.raises(SpecError) as e:
        loads(src + "group g {\n  params = [layer, heads(final)]\n}\n", "t.fg")
    assert e.value.codes == ["E508"] and "split it" in str(e.value)
    # A group named like a default group keeps that group's parameters: `heads` here
    # holds the local heads and, by its selector, the blocks.
    with pytest.raises(SpecError) as e:
        loads(src + "group heads {\n  params = blocks\n}\n", "t.fg")
    assert e.value.codes == ["E508"] and "default group of that name" in str(e.value)


def test_heads_selector_prefers_a_loss_name():
    """heads(NAME) selects the loss named NAME; heads(local) and heads(final) mean every
    local and every final head only when no loss has that name."""
    group = "group g {\n  params = heads(%s)\n}\n"
    keywords = BASE + "loss aux = probe on blocks\nloss deep = probe on h\n" \
        "loss out = readout on output\n"
    plan = loads(keywords + group % "local", "t.fg").plan()
    assert _members(plan, "g") == ["loss:aux@layer.1/linear.0", "loss:aux@layer.2/linear.0",
                                   "loss:deep@h/linear.0"]
    assert _members(loads(keywords + group % "final", "t.fg").plan(), "g") == \
        ["loss:out@output/linear.0"]
    named = BASE + "loss local = probe on h\nloss aux = probe on blocks\n" \
        "loss final = probe on layer\nloss out = readout on output\n"
    assert _members(loads(named + group % "local", "t.fg").plan(), "g") == ["loss:local@h/linear.0"]
    plan = loads(named + group % "final", "t.fg").plan()
    assert _members(plan, "g") == ["loss:final@layer.1/linear.0", "loss:final@layer.2/linear.0"]
    assert plan.assignment["loss:out@output/linear.0"] == "readout"  # default groups unchanged
    assert plan.estimator_of("g") == Estimator("backprop")


def test_unknown_heads_selector_is_shown_as_written():
    src = BASE + "loss local = probe on blocks\nloss final = readout on output\n"
    with pytest.raises(SpecError) as e:
        loads(src + "group g {\n  params = heads(locl)\n}\n", "t.fg")
    assert e.value.codes == ["E501"]
    assert "selects `heads(locl)`" in str(e.value)
    assert "did you mean `heads(local)`?" in str(e.value)


# --- values, losses and data ---------------------------------------------------------


def test_a_value_read_only_by_a_loss_is_used():
    src = """
    input x = vector(8), classes = 2
    head readout = linear(classes)
    network {
      side = x | dense(8) | relu
      out x | dense(8) | relu
    }
    loss probe = readout on side
    loss final = readout on output
    """
    assert set(loads(src, "t.fg").graph.losses) == {"loss:probe@side", "loss:final@output"}


@pytest.mark.parametrize("normalize,dataset", [
    ("mnist", "mnist"), ("cifar10", "CIFAR10"), ("imagenet", '"data/imagenet.npz"'),
    ("none", '"x.NPZ"'), ('"cifar10"', "cifar10")])
def test_known_statistics_and_datasets(normalize, dataset):
    from fgc.training.data import DATASET_STATS
    src = BASE.replace("classes = 2", f"classes = 2, normalize = {normalize}") + \
        "loss local = probe on blocks\nloss final = readout on output\n" \
        f"train {{\n  dataset = {dataset}\n}}\n"
    prog = loads(src, "t.fg")
    assert prog.graph.meta["normalize"] == normalize.strip('"')
    assert prog.train.dataset == dataset.strip('"')
    assert DATASET_STATS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_cnn_stem_without_a_site_is_reported():
    text = (SPECS / "cnn.fg").read_text(encoding="utf-8")
    text = text.replace("batchnorm | perturb | relu", "batchnorm | relu")
    prog = loads(text, "cnn.fg")
    prog.plan("lg-bp")  # backprop needs no sites
    for algo in ("fg-a", "lg-fg-a"):
        with pytest.raises(SpecError) as e:
            prog.plan(algo)
        (d,) = e.value.diagnostics
        assert d.code == "E507" and d.span.line == 20 and "`net/conv.0`" in d.message


def test_check_plans_the_algorithm_the_spec_names(tmp_path, capsys):
    """`fgc check` applies the spec's own train.algorithm, and only that one."""
    spec = tmp_path / "t.fg"
    local = BASE.replace("head readout = linear(classes)\n", "") + "loss local = probe on blocks\n"
    spec.write_text(local, encoding="utf-8")
    assert main(["check", str(spec)]) == 0  # no algorithm named: nothing to plan
    assert "ok (" in capsys.readouterr().out
    spec.write_text(local + "train {\n  algorithm = fg-w\n}\n", encoding="utf-8")
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:13:15: error[E504]" in err and "^^^^" in err


def test_lowering_error_is_an_fg_error():
    assert issubclass(LoweringError, FgError) and issubclass(LoweringError, NotImplementedError)
    import fgc
    assert fgc.LoweringError is LoweringError
