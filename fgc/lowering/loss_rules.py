"""How each loss kind (:mod:`fgc.graph.loss_kinds`) is computed: plain, and replicated.

A :class:`LossRule` is registered per kind name. ``plain(z, labels, opts)`` gives the
per-example loss ``[B]`` of the head output ``z``; ``fused(opts)`` gives, when the kind
has one for those options, the fused replicated rule ``(h, w, b, labels, groups) ->
[B, P, G]`` (one pass for every replica, a custom JVP). A kind whose options have no
fused rule is replicated literally (:func:`fgc.lowering.contrastive.naive_replicated`,
``P · G`` head passes), which is exact and slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax

from fgc.errors import LoweringError
from fgc.lowering.contrastive import infonce, naive_replicated, replicated_infonce
from fgc.lowering.replicated import replicated_xent, xent

__all__ = ["LossRule", "RULES", "loss_rule", "replicated_loss"]


@dataclass(frozen=True)
class LossRule:
    plain: Callable[[jax.Array, jax.Array, dict], jax.Array]
    fused: Callable[[dict], Callable | None] = lambda opts: None


RULES: dict[str, LossRule] = {
    "xent": LossRule(lambda z, labels, opts: xent(z, labels),
                     lambda opts: replicated_xent),
    "contrastive": LossRule(
        lambda z, labels, opts: infonce(z, opts["temperature"], opts["stop_keys"]),
        lambda opts: (lambda h, w, b, labels, groups: replicated_infonce(
            h, w, b, groups, opts["temperature"])) if opts["stop_keys"] else None),
}
"""Kind name → its lowering."""


def loss_rule(kind: str) -> LossRule:
    if kind not in RULES:
        raise LoweringError(f"loss kind `{kind}` has no lowering (lowered: {', '.join(RULES)})")
    return RULES[kind]


def replicated_loss(kind: str, opts: dict, h: jax.Array, w: jax.Array, b: jax.Array,
                    labels: jax.Array, groups: int) -> jax.Array:
    """The replicated loss ``[B, P, G]`` of a head ``mean_p | linear`` on ``h [B, P, C]``:
    the kind's fused rule, or the literal construction when it has none."""
    rule = loss_rule(kind)
    fused = rule.fused(opts)
    if fused is not None:
        return fused(h, w, b, labels, groups)
    return naive_replicated(lambda z: rule.plain(z, labels, opts), h, w, b, groups)
