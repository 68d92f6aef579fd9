"""How the K tangents of a forward-gradient estimator combine: registered aggregations.

An estimator with ``tangents = K`` draws K noise directions ``v_1 … v_K``, takes one
directional derivative ``d_k = ∇J·v_k`` per direction (one ``jax.jvp`` each, vmapped) and
turns them into one update. An :class:`Aggregation` may act at two points:

- :meth:`Aggregation.prepare` on the noise **before** the jvp, one *partition* at a time:
  the rule hands it the K directions of M independent partitions of n dimensions each,
  ``[K, M, n]`` (which dimensions form a partition is the rule's business: it knows the
  credit map; see :mod:`fgc.learning.passes`);
- :meth:`Aggregation.combine` on the K per-tangent estimates ``ĝ_k = d_k·v_k`` after it
  (leading axis K), or :meth:`Aggregation.finish` on their sum when the tangents were
  evaluated in chunks.

Three are registered (Flügel et al. 2025, [M] in REFERENCE):

``mean``
    ``(1/K) Σ_k ĝ_k``. Unbiased, ``E = ∇J``; variance ÷ K.
``sum``
    ``Σ_k ĝ_k``. ``E = K·∇J``: the unbiased estimator of the gradient of ``K·J``, i.e.
    ``mean`` with the learning rate multiplied by K (same direction, same variance relative
    to its expectation). ``fgc verify`` compares it with ``K·∇J``.
``orthogonal``
    Gram–Schmidt of the K directions inside each partition before the jvp, then the mean.
    With ``Q`` (n × r, r = min(K, n)) an orthonormal basis of the span of a partition's
    directions, the directions become ``u_k = √(nK/r)·q_k`` for k ≤ r (and 0 beyond: K > n
    directions cannot be orthogonal in n dimensions), so the partition's part of the
    estimate is ``(1/K) Σ_k (∇J·u_k) u_k = (n/r)·Q Qᵀ ∇J`` plus zero-mean terms from the
    other partitions' noise. For Gaussian noise the span is a uniformly random r-dimensional
    subspace, so ``E[Q Qᵀ] = (r/n)·I`` and the estimate is **unbiased** — the scale
    ``√(n K / r)`` is exactly what makes it so (without it, the orthonormal projection of
    [M] has expectation ``(r/n)·∇J``: shrunk by the partition's dimension). For K ≤ n each
    ``u_k`` has norm √n, a uniformly random direction; for K ≥ n the partition's part is
    its exact gradient. Rademacher noise keeps ``E[q qᵀ] = I/n`` by symmetry (its law is
    invariant under signed permutations of coordinates) while the directions are linearly
    independent, which fails with probability about ``K²·2⁻ⁿ`` in tiny partitions.
    The noise of different partitions stays independent and each direction has mean zero
    (Gram–Schmidt's signs, R's diagonal positive, are kept: the sign convention of
    Householder QR makes a direction's mean non-zero, and ``fgc verify`` then reports the
    cross terms' bias), so cross terms vanish in expectation; ``fgc verify --aggregate orthogonal`` checks the claim on any spec.

A new aggregation is a subclass registered with :func:`register_aggregation`; the
language accepts every registered name (``forward(aggregate = NAME)``).
"""

from __future__ import annotations

import abc
import math
from typing import Callable, ClassVar

import jax.numpy as jnp
from jaxtyping import Array

from fgc.errors import LoweringError

__all__ = ["AGGREGATIONS", "Aggregation", "aggregation", "register_aggregation"]


class Aggregation(abc.ABC):
    """How K per-tangent estimates become one update (see the module docstring).

    Attributes:
      name: the registered name.
      shapes_noise: whether :meth:`prepare` changes the noise (rules skip the partition
        layout otherwise, so the plain aggregations add no operation).
    """

    name: ClassVar[str]
    shapes_noise: ClassVar[bool] = False

    def prepare(self, noise: Array) -> Array:
        """The K directions of M independent partitions of n dimensions, ``[K, M, n]``,
        as the jvp should see them."""
        return noise

    def combine(self, per_tangent: Array) -> Array:
        """The update from the K per-tangent estimates (leading axis K)."""
        return self.finish(per_tangent.sum(axis=0), per_tangent.shape[0])

    @abc.abstractmethod
    def finish(self, total: Array, k: int) -> Array:
        """The update from the sum of the K per-tangent estimates."""

    @abc.abstractmethod
    def expectation(self, k: int) -> float:
        """``c`` with ``E[update] = c·∇J`` for K tangents (what ``fgc verify`` compares)."""


AGGREGATIONS: dict[str, Aggregation] = {}
"""Aggregation name → instance (filled by :func:`register_aggregation`)."""


def register_aggregation(name: str) -> Callable[[type[Aggregation]], type[Aggregation]]:
    """Class decorator: registers one instance of the class under ``name``."""

    def deco(cls: type[Aggregation]) -> type[Aggregation]:
        if name in AGGREGATIONS:
            raise ValueError(f"aggregation `{name}` is already registered by "
                             f"{type(AGGREGATIONS[name]).__name__}")
        cls.name = name
        AGGREGATIONS[name] = cls()
        return cls

    return deco


def aggregation(name: str) -> Aggregation:
    """The registered aggregation ``name``; an error naming the known ones otherwise."""
    if name not in AGGREGATIONS:
        raise LoweringError(f"no aggregation `{name}` is registered (known: "
                            f"{', '.join(AGGREGATIONS)})")
    return AGGREGATIONS[name]


@register_aggregation("mean")
class Mean(Aggregation):
    def combine(self, per_tangent):
        return per_tangent.mean(axis=0)

    def finish(self, total, k):
        return total / k

    def expectation(self, k):
        return 1.0


@register_aggregation("sum")
class Sum(Aggregation):
    def finish(self, total, k):
        return total

    def expectation(self, k):
        return float(k)


@register_aggregation("orthogonal")
class Orthogonal(Aggregation):
    shapes_noise = True

    def prepare(self, noise):
        k, _, n = noise.shape
        r = min(n, k)
        # Modified Gram–Schmidt, written out: it keeps Gram–Schmidt's signs (a direction
        # stays on its own noise's side; Householder QR flips columns by the sign of a
        # coordinate, which gives the directions a non-zero mean and, through the other
        # partitions' noise in every directional derivative, a bias), and it needs no
        # LAPACK call (XLA:CPU's QR, vmapped inside the chunked jvps, hung in a test).
        qs: list[Array] = []
        for j in range(r):
            v = noise[j]
            for q in qs:
                v = v - jnp.sum(q * v, axis=-1, keepdims=True) * q
            qs.append(v / jnp.linalg.norm(v, axis=-1, keepdims=True))
        q = jnp.stack(qs) * math.sqrt(n * k / r)
        if r < k:  # more tangents than dimensions: the rest would be zero directions
            q = jnp.concatenate([q, jnp.zeros((k - r, *q.shape[1:]), q.dtype)])
        return q

    def finish(self, total, k):
        return total / k

    def expectation(self, k):
        return 1.0
