"""``project(..., recompute = true)``: the activity-space projection one block at a time.

The plain projection (:class:`fgc.learning.projection.ActivityProjection`) keeps every
node's value from the step's forward: its target jvps linearise at them (only tangents
are new) and the block-local backward of every ``ĝ`` runs at once. Its peak is then
every activation plus every block's backward residuals, about what backprop holds, so the
memory forward mode should save never appears. Here the step keeps only the values that
cross blocks, and each unit in turn

1. takes its guess (noise, or a backward through its auxiliary head),
2. runs the target's jvp along it from its output, the downstream primal recomputed with
   the tangent (no value of it is stored),
3. projects, and backpropagates ``ĝ`` through its own segment, recomputed from its
   inputs: only that segment's residuals are alive.

Unit ``i + 1``'s inputs and key pass through :func:`fgc.learning.blockwise` 's fence on
unit ``i``'s gradients, so XLA cannot start the next unit (or keep its values) before
this one's backward is done. The arithmetic is the plain projection's on the same
values, so the update is the same to round-off (``tests/test_projection.py``); the price
is about one more forward of what lies downstream per unit (primal next to the tangent)
and one more forward of each segment.
"""

from __future__ import annotations

import equinox as eqx
import jax

from fgc.learning.blockwise import _after, partition_nodes
from fgc.learning.estimators import PassResult

__all__ = ["run_recomputing"]


def _reads(steps: dict, live: set) -> set:
    """The values the steps in ``live`` read from outside it."""
    return {v for s in live for v in steps[s].inputs if v not in live}


def _segment_grads(net, params, static, x, cur, segment: frozenset, output: str, cot):
    """The gradients of ``segment``'s parameters from ``cot`` at ``output``, by a backward
    through the segment alone, recomputed from its inputs (read from ``cur``, stopped)."""
    own, rest = partition_nodes(params, segment)

    def seg(step, apply, args):
        if step.id not in segment:
            return jax.lax.stop_gradient(cur[step.id])
        return apply(*[a if v in segment else jax.lax.stop_gradient(a)
                       for v, a in zip(step.inputs, args)])

    def f(p):
        return eqx.combine(p, rest, static).run(x, intercept=seg, need=output)[0][output]

    _, pull = jax.vjp(f, own)
    return pull(cot)[0]


def run_recomputing(rule, params, static, x, labels, key) -> PassResult:
    """One step of ``rule`` (an activity projection, granularity sample or block),
    holding one unit's working set at a time; same gradients as ``rule`` 's plain run."""
    from fgc.learning.projection import project, scaled_guess
    net = eqx.combine(params, static)
    first = net.forward(x, labels, keep_values=True)
    values = first.values
    steps = {s.id: s for s in net.steps}
    est = rule.estimator
    per_sample = est.granularity == "sample"
    # The heads learn exactly, from the block outputs (values that cross blocks anyway).
    heads = rule.local_backward(params, static, x, labels, values, {})
    merged = {}  # leaf path -> a unit's segment gradient
    lives = [frozenset(rule.downstream(u.output)) | frozenset(u.segment) for u in rule.units]
    later = [set().union(*(_reads(steps, lv) for lv in lives[i + 1:]))
             for i in range(len(lives))]
    cur = dict(values)
    for i, u in enumerate(rule.units):
        q = rule.unit_product(u, net, x, labels, cur, jax.random.fold_in(key, i),
                              linearise=False)
        s = project(q["dot"], q["sq"], est.eps)
        hat = scaled_guess(s, q["guess"], per_sample)
        seg = _segment_grads(net, params, static, x, cur, frozenset(u.segment), u.output, hat)
        mine = {jax.tree_util.keystr(p): g for p, g in
                jax.tree_util.tree_flatten_with_path(seg)[0]}
        merged.update(mine)
        fenced, key = _after(mine, {n: cur[n] for n in later[i]}, key)
        cur.update(fenced)
    grads = jax.tree_util.tree_map_with_path(
        lambda path, g: merged.get(jax.tree_util.keystr(path), g), heads)
    return PassResult(grads, first.losses, first.state)
