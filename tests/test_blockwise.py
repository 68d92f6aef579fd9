"""Block-wise execution: the plan's pieces, the network running one piece, and a step that
runs the pieces one after another giving the same estimate as the whole network at once
(same key, same noise), with less memory."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgc
from fgc.learning.estimators import UpdateRule
from fgc.lowering.lower import lower
from fgc.training.train import with_estimator
from specs import local_mixer

# Three blocks (a stem and two mixers), each with its replicated local loss, and a readout.
MIXER = local_mixer("blockwise", image=4, classes=3, zero_readout=False).replace(
    "| mixer(8, 2)", "| mixer(8, 2) * 2")

# Batch norm in every block: its running statistics are state the pieces must hand back.
BATCHNORM = """
spec "batch-norm blocks"
input x = vector(6), classes = 3

block layer(w) {
  out in | dense(w) | batchnorm | perturb | relu
}

head aux = dense(4) | relu | linear(classes)
head readout = linear(classes)

network {
  out x | layer(5) | layer(5) | layer(5)
}

loss local = aux on blocks
loss final = readout on output
"""

GREEDY = ["lg-fg-a", "lg-fg-w", "lg-bp", "lg-fa"]


def _check_partition(plan):
    """Every op and head node in exactly one piece; every edge from one piece into another a
    stop edge read by a later piece; every loss with its whole head in one piece."""
    g = plan.graph
    piece_of = {n: i for i, p in enumerate(plan.pieces) for n in p.nodes}
    ops = {n for n in g.g if g.node(n).role in ("op", "head")}
    assert set(piece_of) == ops and sum(len(p.nodes) for p in plan.pieces) == len(ops)
    for u, v in g.g.edges:
        if u in piece_of and v in piece_of and piece_of[u] != piece_of[v]:
            assert g.edge(u, v).stop_gradient, (u, v)
            assert piece_of[u] < piece_of[v], (u, v)
            assert u in plan.pieces[piece_of[u]].gives and u in plan.pieces[piece_of[v]].reads
    for loss in g.losses.values():
        [home] = [i for i, p in enumerate(plan.pieces) if loss.id in p.losses]
        assert all(piece_of[n] == home for n in loss.head_nodes)


def test_pieces_of_mixer_m_8_16():
    prog = fgc.load("specs/mixer-m-8-16.fg")
    for algorithm in GREEDY:
        plan = prog.plan(algorithm)
        assert [p.name for p in plan.pieces] == ["stem.1", "mixer.1", "mixer.2", "mixer.3",
                                                 "final"]
        _check_partition(plan)
        stem, m1 = plan.pieces[:2]
        assert stem.reads == ("input",) and stem.losses == ("loss:local@stem.1",)
        assert "net/patchify.0" in stem.nodes  # no block of its own: it joins the stem
        assert m1.reads == ("stem.1/relu.7",) and m1.gives == ("mixer.1/relu.12",)
        assert plan.pieces[-1].losses == ("loss:final@output",)


@pytest.mark.parametrize("algorithm", ["bp", "l-bp", "fg-a", "fg-w"])
def test_one_piece_when_not_greedy(algorithm):
    """Non-greedy algorithms cut at most a readout: one piece, the whole program."""
    plan = fgc.load("specs/mixer-m-8-16.fg").plan(algorithm)
    assert len(plan.pieces) == 1 and plan.pieces[0].name == "whole"
    _check_partition(plan)
    assert UpdateRule.build(plan).pieces == 1


def test_one_piece_without_stop_edges():
    plan = fgc.loads(local_mixer("final only", local=False), "f.fg").plan("bp")
    assert not any(plan.graph.edge(u, v).stop_gradient for u, v in plan.graph.g.edges)
    assert len(plan.pieces) == 1
    _check_partition(plan)


@pytest.mark.parametrize("spec", ["specs/resnet18-k8.fg", "specs/mixer-m-1-16.fg",
                                  "specs/mixer-l-8-64-contrastive.fg", "specs/cnn.fg"])
def test_pieces_partition_every_spec(spec):
    prog = fgc.load(spec)
    for algorithm in GREEDY:
        try:
            plan = prog.plan(algorithm)
        except fgc.SpecError:
            continue
        assert len(plan.pieces) > 1
        _check_partition(plan)


def _estimates(text, algorithm, dtype, key=5, **estimator):
    prog = fgc.loads(text, "blockwise.fg")
    plan = prog.plan(algorithm)
    if estimator:
        plan = with_estimator(plan, **estimator)
    net = lower(plan, jax.random.key(0), dtype=dtype)
    shape = plan.graph.node("input").shape
    x = jax.random.uniform(jax.random.key(1), (4, *shape), dtype)
    y = jax.random.randint(jax.random.key(2), (4,), 0, 3)
    on, off = UpdateRule.build(plan, net), UpdateRule.build(plan, net, blockwise=False)
    assert on.pieces == len(plan.pieces) > 1 and off.pieces == 1
    return [eqx.filter_jit(r.estimate)(net, x, y, jax.random.key(key)) for r in (on, off)]


def _assert_same(a, b, rtol):
    """Every leaf equal to ``rtol`` relative to the estimate's largest entry: float sums
    may round differently when XLA fuses a piece on its own, and a gradient that is zero
    in exact arithmetic (a bias before a norm) is then a different round-off residue."""
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    scale = max(float(np.max(np.abs(np.asarray(v)))) for _, v in lb if np.size(v))
    for (path, u), (_, v) in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=rtol * scale,
                                   err_msg=jax.tree_util.keystr(path))


# float64 for every greedy rule by default; float32 (the same pieces, looser round-off)
# under the slow marker.
@pytest.mark.parametrize("algorithm,dtype", [(a, "float64") for a in GREEDY] + [
    *(pytest.param(a, "float32", marks=pytest.mark.slow) for a in GREEDY)])
def test_blockwise_equals_whole_network(algorithm, dtype):
    """Same key, same noise, same arithmetic: gradients and losses as on the whole network,
    to round-off (float32 1e-6, float64 1e-13 of each array's largest entry). Most arrays
    come out bit for bit; where XLA fuses a piece on its own differently, a sum may
    round differently (LG-FG-A's readout head: 2e-16 relative in float64)."""
    with jax.enable_x64(dtype == "float64"):
        on, off = _estimates(MIXER, algorithm, jnp.dtype(dtype))
        _assert_same(on, off, 1e-6 if dtype == "float32" else 1e-13)
        assert any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(on.grads))


@pytest.mark.parametrize("algorithm", ["lg-fg-a", pytest.param("lg-fg-w", marks=pytest.mark.slow)])
def test_blockwise_equals_whole_network_over_chunked_tangents(algorithm):
    """K = 3 tangents, two at a time, orthogonalised: each piece draws its own share of the
    same noise."""
    with jax.enable_x64(True):
        on, off = _estimates(MIXER, algorithm, jnp.float64, tangents=3, chunk=2,
                             aggregate="orthogonal")
        _assert_same(on, off, 1e-13)


@pytest.mark.parametrize("algorithm", [
    pytest.param(a, marks=pytest.mark.slow) if a == "lg-fg-w" else a for a in GREEDY])
def test_blockwise_batch_norm_state(algorithm):
    """Batch-norm running statistics and losses come back as from the whole network."""
    with jax.enable_x64(True):
        on, off = _estimates(BATCHNORM, algorithm, jnp.float64)
        assert len(on.state) == 3
        _assert_same(on, off, 1e-13)


def test_network_runs_one_piece_from_given_values():
    plan = fgc.loads(MIXER, "blockwise.fg").plan("lg-bp")
    net = lower(plan, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 1))
    y = jnp.array([0, 1])
    whole = net.forward(x, y, keep_values=True)
    given: dict = {}
    for piece in net.pieces:
        out = net.forward(x, y, piece=piece, given={u: given[u] for u in piece.reads
                                                     if u in given})
        assert set(out.losses) == set(piece.losses) and set(out.boundary) == set(piece.gives)
        for lid in piece.losses:
            np.testing.assert_array_equal(out.losses[lid], whole.losses[lid])
        given.update(out.boundary)
    with pytest.raises(ValueError, match="reads"):
        net.forward(x, y, piece=net.pieces[1], given={})


def test_blockwise_step_uses_less_memory():
    """XLA's memory analysis of the compiled LG-FG-A step: the pieces one after another
    need clearly less than the whole network at once."""
    text = local_mixer("memory", image=16, classes=3, width=32).replace(
        "| mixer(32, 2)", "| mixer(32, 2) * 3")
    plan = fgc.loads(text, "memory.fg").plan("lg-fg-a")
    net = lower(plan, jax.random.key(0))
    x = jnp.zeros((64, 16, 16, 1), jnp.float32)
    y = jnp.zeros((64,), jnp.int32)
    k = jax.random.key(0)

    def temp(rule):
        compiled = eqx.filter_jit(rule.estimate).lower(net, x, y, k).compile()
        return getattr(compiled, "compiled", compiled).memory_analysis().temp_size_in_bytes

    on = temp(UpdateRule.build(plan, net))
    off = temp(UpdateRule.build(plan, net, blockwise=False))
    assert on < 0.6 * off, (on, off)


def test_a_blockwise_step_keeps_the_schedule_needing_least_memory():
    """A step that runs pieces is compiled under XLA:CPU's default and its memory-optimised
    schedule and keeps the smaller program (a whole-network step has one candidate); the
    schedules order the same operations, so the step's numbers are bit for bit the same
    whichever is kept, and the run loop's flat step (fgc train) keeps the smaller too."""
    from fgc.learning.blockwise import MEMORY_SCHEDULE
    from fgc.training.compiling import footprint
    from fgc.training.data import synthetic_dataset
    from fgc.training.flat_step import FlatStep
    from fgc.training.train import prepare, step_body
    text = local_mixer("schedule", image=16, classes=3, width=32).replace(
        "| mixer(32, 2)", "| mixer(32, 2) * 3")
    prog = fgc.loads(text, "schedule.fg")
    data = synthetic_dataset(image_shape=(16, 16, 1), num_classes=3, n_train=64, n_test=8)
    assert UpdateRule.build(prog.plan("bp")).schedules() == ({},)
    assert UpdateRule.build(prog.plan("lg-fg-a"), blockwise=False).schedules() == ({},)
    run = prepare(prog, algorithm="lg-fg-a", dataset=data, batch_size=64, seed=0)
    candidates = run.rule.schedules()
    if jax.default_backend() == "cpu":
        assert candidates == ({}, MEMORY_SCHEDULE)
    x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
    step = eqx.filter_jit(step_body(run.rule, run.tx))
    net, opt = run.init_state()
    lowered = step.lower(net, opt, x, y, run.key)
    each = [lowered.compile(compiler_options=dict(c) or None) for c in candidates]
    outs = [jax.device_get(c(net, opt, x, y, run.key)) for c in each]
    for out in outs[1:]:
        for a, b in zip(jax.tree_util.tree_leaves(outs[0]), jax.tree_util.tree_leaves(out)):
            np.testing.assert_array_equal(a, b)
    # the run loop's flat step: its first call keeps the smallest of its own programs
    net, opt = run.init_state()
    flat = FlatStep(step_body(run.rule, run.tx), net, opt, schedules=candidates)
    lowered = flat._jitted.lower(flat.arrays(net, opt), x, y, run.key)
    sizes = [footprint(lowered.compile(compiler_options=dict(c) or None)) for c in candidates]
    arrays, _ = flat(flat.arrays(net, opt), x, y, run.key)
    assert flat.options == candidates[sizes.index(min(sizes))]
    jax.block_until_ready(flat(arrays, x, y, run.key))  # later calls run the kept program


def test_a_piece_without_losses_has_a_zero_objective():
    """A `stopgrad` after the last block is a piece of its own that computes no loss (found
    by the gradient oracle): its objective is a float zero, and every greedy rule runs."""
    from fgc.learning.estimators import objective
    assert objective({}).dtype == jnp.result_type(float) and float(objective({})) == 0.0
    text = MIXER.replace("| mixer(8, 2) * 2", "| mixer(8, 2) * 2 | stopgrad")
    prog = fgc.loads(text, "trailing-stopgrad.fg")
    x = jax.random.uniform(jax.random.key(1), (4, 4, 4, 1))
    y = jnp.arange(4) % 3
    for algorithm in ("lg-bp", "lg-fg-a"):  # the backprop and the activity pass
        plan = prog.plan(algorithm)
        net = lower(plan, jax.random.key(0))
        est = UpdateRule.build(plan, net).estimate(net, x, y, jax.random.key(2))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(est.grads))
