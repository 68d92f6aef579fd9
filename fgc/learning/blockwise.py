"""Block-wise execution: a step runs the plan's pieces one after another.

Under a greedy algorithm no gradient and no tangent crosses from one piece
(:mod:`fgc.plan.pieces`) into another, so the objective's gradient, exact or estimated,
is each piece's own: piece ``k``'s forward (with its tangents and only its sites' noise)
and its local backward give its parameters' gradients and the values it hands on, and
nothing of it is needed afterwards. :func:`run_pieces` runs every update-rule pass on
piece 0, then on piece 1 from piece 0's outputs, and so on.

Why a fence: XLA schedules one program; left alone it may start piece ``k + 1``'s
forward (or draw its noise) while piece ``k``'s values still wait for its backward, and
then both pieces' buffers are alive at once. ``jax.lax.optimization_barrier`` over piece
``k``'s outputs, gradients, losses, state and the step's key says so, but XLA:CPU removes
barriers before it schedules; so piece ``k + 1``'s inputs and key also pass through a loop
whose trip count depends on piece ``k``'s gradients (:func:`hold`, zero trips: the values
are unchanged). Everything of piece ``k + 1``, its noise included, then waits until piece
``k`` is done, and the peak is about one piece's working set plus what every step holds
(parameters, optimizer state, gradients, the batch).

Same estimate: every pass draws its noise from the same keys as on the whole network
(its key split over *all* its sites or weight leaves; a piece takes its own share), and
computes the same arithmetic on the same values, so the estimate equals the
whole-network one for the same key, to float round-off (XLA may fuse a piece on its own
differently and sum in another order; ``tests/test_blockwise.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

from fgc.lowering.params import node_of

if TYPE_CHECKING:
    from fgc.learning.estimators import PassRule
    from fgc.plan.pieces import Piece

__all__ = ["MEMORY_SCHEDULE", "hold", "own_params", "partition_nodes", "run_pieces", "schedules"]

MEMORY_SCHEDULE = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
"""XLA:CPU's memory-optimised instruction scheduler, as a compiler option."""


def schedules(pieces: int) -> tuple[dict[str, str], ...]:
    """The XLA compiler options worth compiling a step of ``pieces`` pieces with; the step
    keeps the one whose compiled program needs the least memory
    (:func:`fgc.training.compiling.compile_smallest`).

    Why two on a CPU: XLA:CPU's default scheduler orders operations so that independent
    ones can run side by side, and may interleave a piece's backward with the next
    piece's work, so that their buffers overlap; its memory-optimised scheduler tends to
    finish each piece first, which is what block-wise execution is for. Which needs less
    differs by network, measured (BENCHMARKS §5.4, batch 128): LocalMixer M/8/16 LG-FG-A
    267.9 -> 189.6 MiB, LG-BP 191.9 -> 145.4, LG-FG-W 173.5 -> 142.3 with the
    memory-optimised one (step times 0.95-0.99x), but the ResNet-18 in 8 blocks under
    LG-BP 434.5 -> 505.4 MiB. Both schedules run the same operations: the step's numbers do
    not depend on the choice. A whole-network step, or another backend, has one candidate:
    the default.
    """
    if pieces > 1 and jax.default_backend() == "cpu":
        return ({}, MEMORY_SCHEDULE)
    return ({},)


def partition_nodes(params: PyTree, nodes) -> tuple[PyTree, PyTree]:
    """``(own, rest)``: the parameters of ``nodes`` and the others (None leaves where
    they do not belong)."""
    nodes = set(nodes)
    return eqx.partition(params, jax.tree_util.tree_map_with_path(
        lambda path, _: node_of(path) in nodes, params))


def own_params(params: PyTree, piece: Piece | None) -> tuple[PyTree, PyTree | None]:
    """``(own, rest)``: the parameters of ``piece``'s nodes and the others; the whole
    network's are all ``own`` (``rest`` None)."""
    if piece is None:
        return params, None
    return partition_nodes(params, piece.nodes)


def _not_folded_zero(tree) -> Array:
    """A float32 zero XLA cannot fold away: ``0 · Σ tree`` (NaN when ``tree`` holds one)."""
    return sum(jnp.sum(a.astype(jnp.float32)) for a in jax.tree_util.tree_leaves(tree)) \
        * jnp.float32(0)


def hold(values: dict[str, Array], zero: Array | None = None) -> dict[str, Array]:
    """``values`` unchanged, but stored: passed through a ``while_loop`` that runs
    ``zero != 0`` times (``zero`` defaults to :func:`_not_folded_zero` of the values).

    XLA fuses cheap elementwise work into every reader, so a value read in two places is
    often recomputed in both from what it was computed from, and those inputs stay alive
    instead of it (the noise's sampler intermediates, a piece's outputs re-derived inside
    the next piece from the previous one's matrix products). No fusion crosses a loop,
    and XLA cannot fold one whose trip count depends on a float that may be NaN. With
    finite values it runs zero times; its body adds that zero anyway, so the values come
    out bit for bit as they went in.
    """
    if not values:
        return values
    zero = _not_folded_zero(values) if zero is None else zero
    trips = (zero != 0).astype(jnp.int32)

    def body(carry):
        i, vals = carry
        return i + 1, {n: v + zero.astype(v.dtype) for n, v in vals.items()}

    return jax.lax.while_loop(lambda c: c[0] < trips, body, (jnp.int32(0), values))[1]


def _after(grads: dict[str, Array], boundary: dict[str, Array], key: PRNGKeyArray):
    """``boundary`` and ``key`` unchanged, but made to depend on every gradient in
    ``grads``, so that nothing reading them (the next piece's forward, its noise) can start
    before this piece's backward is done, and the values handed on are stored (:func:`hold`).

    XLA:CPU drops ``optimization_barrier`` before it schedules (its expander pass turns the
    barrier into nothing; CSE then merges every piece's key split into one and all the
    noise is drawn up front), so the order is made a data dependency as well: the loop's
    trip count comes from ``0 · Σ gradients``, and the key's bits go through it too.
    """
    if not jax.tree_util.tree_leaves(grads):
        return boundary, key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    bits = jax.random.key_data(key) if typed else key
    zero = _not_folded_zero(grads)
    out = hold({**boundary, "<key>": bits}, zero)
    bits = out.pop("<key>")
    key = jax.random.wrap_key_data(bits, impl=jax.random.key_impl(key)) if typed else bits
    return out, key


def run_pieces(passes: tuple[PassRule, ...], pieces: tuple[Piece, ...], params: PyTree,
               static: PyTree, x: Array, labels: Array, key: PRNGKeyArray):
    """Every pass on every piece in turn: ``(grads, per-replica losses, state)`` as the
    passes give them on the whole network (pass ``i`` draws from ``fold_in(key, i)``)."""
    got: dict[str, Array] = {}  # leaf path → gradient
    losses, state, given = {}, {}, {}
    for piece in pieces:
        nodes = set(piece.nodes)
        running = [(i, p) for i, p in enumerate(passes) if p.nodes & nodes] or [(0, passes[0])]
        inputs = {u: given[u] for u in piece.reads if u in given}
        grads, first = {}, None
        for i, p in running:
            out = p.run(params, static, x, labels, jax.random.fold_in(key, i),
                        piece=piece, given=inputs)
            first = first or out
            for path, g in jax.tree_util.tree_flatten_with_path(out.grads)[0]:
                if node_of(path) in p.nodes and node_of(path) in nodes:
                    grads[jax.tree_util.keystr(path)] = g
        done = (first.boundary, grads, first.losses, first.state, key)
        boundary, grads, piece_losses, piece_state, key = jax.lax.optimization_barrier(done)
        boundary, key = _after(grads, boundary, key)
        given.update(boundary)
        got.update(grads)
        losses.update(piece_losses)
        state.update(piece_state)
    missing = []

    def pick(path, leaf):
        k = jax.tree_util.keystr(path)
        if k not in got:
            missing.append(k)
            return leaf
        return got[k]

    full = jax.tree_util.tree_map_with_path(pick, params)
    if missing:
        raise AssertionError(f"no piece gave a gradient for {missing[:3]}")
    return full, losses, state
