"""What every part of `fgc bench` shares: its error and the naive replicated loss's limits."""

from __future__ import annotations

from fgc.errors import FgError

NAIVE_LIMIT_BYTES = 4 * 2**30
# The naive replicated loss can take seconds per call at real sizes; it gets at most this
# long for its timed calls (at least three of them), so a benchmark stays a few minutes.
_NAIVE_BUDGET_S = 30.0


class BenchError(FgError):
    """A benchmark cannot run as asked (unknown algorithm, bad sizes, unwritable output)."""

