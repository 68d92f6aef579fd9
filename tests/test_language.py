"""The language front end on the real spec corpus: counts, plans, IR round trips."""

from pathlib import Path

import pytest

from fgc.cli import main
from fgc.config import presets
from fgc.errors import SpecError
from fgc.ir import Graph
from fgc.program import load, loads

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


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.name)
@pytest.mark.parametrize("algo", sorted(presets()))
def test_every_preset_plans_every_spec(spec, algo):
    plan = load(spec).plan(algo)
    g = plan.graph
    stops = {(u, v): g.edge(u, v).why for u, v in g.g.edges if g.edge(u, v).stop_gradient}
    greedy = [e for e, why in stops.items() if why == "greedy"]
    if plan.algorithm.greedy and len(g.blocks) > 1:
        assert greedy, "greedy algorithms stop gradients between blocks"
    if not plan.algorithm.greedy:
        assert not greedy
    for loss in g.losses.values():
        edge = g.edge(loss.source, loss.head_nodes[0])
        trains_backbone = loss.final == (plan.algorithm.target == "global")
        assert edge.stop_gradient != trains_backbone


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
