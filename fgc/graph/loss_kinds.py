"""Loss kinds as registered objects: what a `loss ... kind = K` compares its head against.

Each kind declares, once, the facts the later stages consume:

- ``targets``: what the loss compares with, ``labels`` (integer classes) or ``views``
  (the batch holds two augmented views of each example, rows ``n`` and ``n + B/2``;
  the training stage makes them, :mod:`fgc.training.views`);
- ``output``: what the head must give, ``classes`` (one logit per class, E401) or
  ``embedding`` (any vector ``[D]``, E401);
- ``options``: its own `loss` options with defaults and checks (E203, E206);
- :meth:`LossKind.couples_examples`: whether one example's value moves another
  example's loss *derivative* — the credit map (:mod:`fgc.plan.credit`) then credits a
  unit with every example's replica derivative (sums over the batch), which stays
  unbiased where per-example credit would not be.

How a kind is computed (plain, and fused over replicas) is the lowering's business and
is registered there under the same name (:data:`fgc.lowering.loss_rules.RULES`); a kind
without a lowering fails with a :class:`~fgc.errors.LoweringError` naming it.

Example:
    >>> LOSS_KINDS["contrastive"].couples_examples({"stop_keys": False})
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["LOSS_KINDS", "LossKind", "Option", "register_loss_kind", "view_losses"]


@dataclass(frozen=True)
class Option:
    """One kind-specific `loss` option.

    Attributes:
      name: the option's name in the spec.
      default: its value when not given.
      check: value → an error message, or None when the value is fine.
      doc: one line for docs and hints.
    """

    name: str
    default: object
    check: Callable[[object], str | None]
    doc: str = ""


@dataclass(frozen=True)
class LossKind:
    """The declared facts of one loss kind (see the module docstring)."""

    name: str
    targets: str  # "labels" or "views"
    output: str  # "classes" or "embedding"
    options: tuple[Option, ...] = ()
    couples: Callable[[dict], bool] = field(default=lambda opts: False)
    doc: str = ""

    def couples_examples(self, opts: dict) -> bool:
        """Whether example ``m``'s loss derivative depends on example ``n``'s values."""
        return bool(self.couples({**self.defaults(), **opts}))

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


LOSS_KINDS: dict[str, LossKind] = {}
"""Kind name → its facts (filled by :func:`register_loss_kind`)."""


def register_loss_kind(kind: LossKind) -> LossKind:
    """Adds a kind; a name registered twice is an error."""
    if kind.name in LOSS_KINDS:
        raise ValueError(f"loss kind `{kind.name}` is already registered")
    if kind.targets not in ("labels", "views") or kind.output not in ("classes", "embedding"):
        raise ValueError(f"loss kind `{kind.name}`: targets must be labels or views, output "
                         "classes or embedding")
    LOSS_KINDS[kind.name] = kind
    return kind


def view_losses(graph) -> list:
    """The graph's losses whose kind compares two views of each example."""
    return [l for l in graph.losses.values() if LOSS_KINDS[l.kind].targets == "views"]


def _positive_number(v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        return "must be a number above 0"
    return None


def _boolean(v) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


register_loss_kind(LossKind(
    "xent", targets="labels", output="classes",
    doc="softmax cross-entropy of the head's logits against the labels"))

register_loss_kind(LossKind(
    "contrastive", targets="views", output="embedding",
    options=(
        Option("temperature", 0.5, _positive_number,
               "τ of the InfoNCE logits cos(q, k) / τ (Ren et al.'s code: 0.5)"),
        Option("stop_keys", True, _boolean,
               "stop-gradient on the keys (every other row the query is compared with, the "
               "second view's included), as Ren et al. do"),
    ),
    # With the keys stopped, row n's loss differentiates through row n's own query only;
    # without, every row's embedding is a key of every other row's loss.
    couples=lambda opts: not opts["stop_keys"],
    doc="SimCLR's InfoNCE between the two views of each example (the positive) and every "
        "other row of the batch (the negatives), on L2-normalised head outputs"))
