"""Compiling a train step under several sets of XLA options and keeping the one whose
program needs the least memory (:func:`compile_smallest`).

Which XLA:CPU schedule makes the smaller block-wise step depends on the network
(:func:`fgc.learning.blockwise.schedules` says which candidates and why), so fgc measures
instead of guessing: the step is lowered once, compiled once per candidate, and XLA's own
memory analysis of each compiled program decides. The candidates differ only in how
operations are ordered, so the chosen program computes the same numbers as the others.

Example:
    >>> lowered = jax.jit(step, donate_argnums=0).lower(*args)          # doctest: +SKIP
    >>> compiled, options = compile_smallest(lowered, rule.schedules())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile_smallest", "footprint"]


def footprint(compiled) -> int | None:
    """Bytes a compiled program needs: arguments + outputs + scratch, donated arguments
    that alias outputs counted once (None where the backend gives no memory analysis)."""
    try:
        m = getattr(compiled, "compiled", compiled).memory_analysis()  # equinox wraps jax's
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes)
    except Exception:  # backends without an analysis, or a partial one
        return None


def compile_smallest(lowered, candidates: tuple[dict, ...]) -> tuple[Any, dict]:
    """``(compiled, options)``: ``lowered`` compiled with each of ``candidates`` (XLA
    compiler options; ``{}`` is XLA's default), keeping the program with the smallest
    :func:`footprint`; the first candidate when none can be measured or they tie."""
    best = None
    for options in candidates or ({},):
        compiled = lowered.compile(compiler_options=dict(options) or None)
        size = footprint(compiled)
        if best is None or (size is not None and (best[2] is None or size < best[2])):
            best = (compiled, dict(options), size)
        if size is None:  # nothing to compare by: keep the first
            break
    return best[0], best[1]
