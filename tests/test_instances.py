"""Block instances by position in loss targets and group selectors: `blocks[7]`,
`blocks[0:7]`, `NAME[-1]`, and located diagnostics for indices that select nothing."""

import pytest

from fgc.errors import SpecError
from fgc.front.fmt import format_spec
from fgc.front.parse import parse
from fgc.plan.program import loads

BASE = """\
input x = vector(8), classes = 2
const LAST = 3
block layer(w) {
  out in | dense(w) | perturb | relu
}
block wide(w) {
  out in | dense(w) | perturb | relu
}
head probe = linear(classes)
head readout = linear(classes)
network {
  out x | layer(8) * 2 | wide(8) | layer(8)
}
loss local = probe on LOSS
loss final = readout on output
group picked {
  params = PARAMS
  lr_scale = 2.0
}
"""


def spec(loss="blocks", params="blocks[-1]"):
    return BASE.replace("LOSS", loss).replace("PARAMS", params)


def _picked(prog, algorithm="lg-bp"):
    plan = prog.plan(algorithm)
    return sorted(n.split("/")[0] for n, g in plan.assignment.items() if g == "picked")


@pytest.mark.parametrize("params,want", [
    ("blocks[-1]", ["layer.3"]), ("blocks[3]", ["layer.3"]), ("blocks[0:2]", ["layer.1", "layer.2"]),
    ("blocks[:1]", ["layer.1"]), ("blocks[2:]", ["layer.3", "wide.1"]), ("layer[-1]", ["layer.3"]),
    ("layer[1:3]", ["layer.2", "layer.3"]), ("blocks[LAST]", ["layer.3"]),
    ("[blocks[0], wide]", ["layer.1", "wide.1"]),
])
def test_group_selects_instances_in_network_order(params, want):
    assert _picked(loads(spec(params=params))) == want


@pytest.mark.parametrize("target,want", [
    ("blocks[0:3]", ["layer.1", "layer.2", "wide.1"]), ("blocks[-1]", ["layer.3"]),
    ("[layer[0], wide[0]]", ["layer.1", "wide.1"]), ("layer[1:]", ["layer.2", "layer.3"]),
])
def test_loss_attaches_to_instances(target, want):
    g = loads(spec(loss=target)).graph
    assert sorted(l.source.split("/")[0] for l in g.losses.values() if not l.final) == want


@pytest.mark.parametrize("where,text,code,message", [
    ("params", "blocks[4]", "E208", "group `picked`: `blocks[4]` is out of range: the network has "
                                     "4 block instances"),
    ("params", "blocks[-5]", "E208", "out of range"),
    ("params", "layer[2:2]", "E208", "`layer[2:2]` selects no instance: block `layer` has 3"),
    ("params", "blocks[0:9]", "E208", "out of range"),
    ("params", "layr[0]", "E201", "indexes `layr`"),
    ("params", "blocks[0.5]", "E206", "whole number"),
    ("loss", "blocks[7]", "E208", "`blocks[7]` is out of range: the network has 4 block instances"),
    ("loss", "wide[1:]", "E208", "selects no instance"),
    ("loss", "wid[0]", "E201", "unknown block `wid`"),
])
def test_bad_indices_are_located_diagnostics(where, text, code, message):
    src = spec(**{where: text})
    with pytest.raises(SpecError) as e:
        loads(src, "bad.fg")
    (diag,) = e.value.diagnostics
    assert diag.code == code and message in diag.message, str(e.value)
    line = next(i for i, l in enumerate(src.splitlines(), 1) if text in l)
    assert diag.span.line == line and src.splitlines()[line - 1][diag.span.column - 1:].startswith(text)


def test_an_index_elsewhere_is_an_error():
    with pytest.raises(SpecError) as e:
        loads(spec().replace("dense(w)", "dense(blocks[0])"))
    assert e.value.diagnostics[0].code == "E206"


def test_indices_print_back():
    src = spec(loss="[blocks[0:2], layer[-1]]", params="[blocks[:LAST], wide[0], blocks[1:]]")
    once = format_spec(parse(src))
    assert "blocks[0:2]" in once and "blocks[:LAST]" in once and "blocks[1:]" in once
    assert parse(once) == parse(src) and format_spec(parse(once)) == once


def test_final_loss_that_is_also_local_trains_the_last_block():
    """`local = true`: under a local target the readout is not stop-gradiented, so the last
    block (which has no local loss of its own here) learns from it; under a global one
    nothing changes."""
    src = spec(loss="blocks[0:3]").replace("readout on output", "readout on output, local = true")
    plan = loads(src).plan("lg-bp")
    final = next(l for l in plan.graph.losses.values() if l.final)
    assert not plan.graph.edge(final.source, final.head_nodes[0]).stop_gradient
    assert not plan.warnings  # every block learns
    plain = loads(spec(loss="blocks[0:3]")).plan("lg-bp")
    assert any(w.code == "W602" for w in plain.warnings)  # the last block never changes
    with pytest.raises(SpecError) as e:
        loads(spec().replace("probe on blocks", "probe on blocks, local = true"))
    assert e.value.diagnostics[0].code == "E206"
