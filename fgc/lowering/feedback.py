"""The fixed random feedback matrices a plan asks for (:mod:`fgc.plan.feedback`).

Each is drawn from ``fold_in(key, crc32("feedback:" + node id))``, so it depends on
the lowering key and its node only, like the weights, and never on the weights.
Scale, as the released code of Ren et al. draws them: ``N(0, 1)`` times the std of
the layer's own initialisation, ``min(2 / sqrt(fan_in), 0.1)`` (also for a layer
initialised to zero), times the estimator's ``scale``.

- FA: ``B`` has the weight's shape.
- DFA: ``B`` is ``[classes, C]`` at the output point (``C`` its channels, shared by
  its positions), with the std of the first layer ending there.
"""

from __future__ import annotations

import math
import zlib

import jax

from fgc.lowering.modules import Feedback, init_std

__all__ = ["fan_in", "feedback_matrices"]


def fan_in(kind: str, weight_shape: tuple[int, ...]) -> int:
    """Inputs feeding one output unit of a weight layer (its initialisation's fan-in)."""
    if kind == "group_linear":  # [G, in / G, out / G]
        return int(weight_shape[-2])
    return int(math.prod(weight_shape[:-1]))  # dense [in, out], token_mix [P, P], conv HWIO


def feedback_matrices(plan, layers: dict, shapes: dict, key, dtype) -> dict[str, Feedback]:
    """node id → :class:`Feedback`, one per need of ``plan.feedback``."""
    out = {}
    kinds = {nid: plan.graph.node(nid).kind for nid in layers}
    for need in getattr(plan, "feedback", ()):
        k = jax.random.fold_in(key, zlib.crc32(f"feedback:{need.node}".encode()))
        first = layers[need.layers[0]]
        std = need.scale * init_std(fan_in(kinds[need.layers[0]], first.weight.shape))
        if need.kind == "feedback_alignment":
            shape = tuple(first.weight.shape)
        else:
            shape = (need.classes, int(shapes[need.node][-1]))
        out[need.node] = Feedback(jax.random.normal(k, shape, dtype) * std)
    return out
