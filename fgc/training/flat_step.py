"""The train step as the run loop calls it: a plain ``jax.jit`` over the flat list of the
state's arrays, donated, instead of ``eqx.filter_jit`` over the network's pytree.

Why: per call ``eqx.filter_jit`` splits the whole (network, optimizer state) pytree into
arrays and the rest, hashes the rest, rebuilds the outputs' pytree, and then waits for
the result (equinox 0.13 blocks on every call). For LocalMixer M/1/16 that measured 6–7 ms
of Python per step on the 2-core development machine, about what issue #13 quotes for a
whole step on a GPU, and the wait keeps the next batch's host work from overlapping the step (BENCHMARKS.md, "Host side and
precision"). Here the pytree is taken apart once: the loop holds the arrays, each step
takes and returns that list (the same arrays, in place: donated), and the pytree is
rebuilt only where a checkpoint, an evaluation or the caller needs it. The compiled
computation is the same function's, so the numbers are the same to the bit.

Example:
    >>> flat = FlatStep(step_body(rule, tx), net, opt_state)      # doctest: +SKIP
    >>> arrays = flat.arrays(net, opt_state)                       # doctest: +SKIP
    >>> arrays, losses = flat(arrays, x, y, key)                   # doctest: +SKIP
    >>> net, opt_state = flat.tree(arrays)                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax

__all__ = ["FlatStep"]


class FlatStep:
    """``(arrays, x, labels, key) -> (arrays, losses)`` for a step
    ``(net, opt_state, x, labels, key) -> (net, opt_state, losses)``.

    Args:
      step: the uncompiled step (:func:`fgc.training.train.step_body`).
      net, opt_state: a state of the structure the step will see (its arrays are not
        kept: only the structure and the non-array parts).
      max_traces: a second trace is an error (``eqx.debug.assert_max_traces``).
      schedules: XLA compiler options to compile it with
        (:meth:`fgc.learning.estimators.UpdateRule.schedules`); with several, the first
        call compiles one program per candidate and keeps the one needing the least
        memory (:func:`fgc.training.compiling.compile_smallest`), its options in
        :attr:`options`, and every call after it runs that program (so every call must
        bring arguments of the first call's shapes, as the run loop's do).
    """

    def __init__(self, step: Callable, net: Any, opt_state: Any, *,
                 max_traces: int | None = None, schedules: tuple[dict, ...] = ({},)):
        dynamic, self._static = eqx.partition((net, opt_state), eqx.is_array)
        _, self._treedef = jax.tree_util.tree_flatten(dynamic)

        def flat(arrays, x, labels, key):
            net, opt_state = self.tree(arrays)
            net, opt_state, losses = step(net, opt_state, x, labels, key)
            out, treedef = self._flatten(net, opt_state)
            if treedef != self._treedef:  # a step must keep the state's structure
                raise AssertionError(f"the train step changed the state's structure: "
                                     f"{self._treedef} → {treedef}")
            return out, losses

        if max_traces is not None:
            flat = eqx.debug.assert_max_traces(flat, max_traces=max_traces)
        self._schedules = tuple(schedules) or ({},)
        self.options: dict = dict(self._schedules[0])
        self._jitted = jax.jit(flat, donate_argnums=0)
        self._compiled = None

    def _flatten(self, net, opt_state):
        dynamic, _ = eqx.partition((net, opt_state), eqx.is_array)
        return jax.tree_util.tree_flatten(dynamic)

    def arrays(self, net: Any, opt_state: Any) -> list:
        """The state's arrays, in the order the step takes them."""
        out, treedef = self._flatten(net, opt_state)
        if treedef != self._treedef:
            raise ValueError("this state does not have the structure the step was built for")
        return out

    def tree(self, arrays: list) -> tuple[Any, Any]:
        """``(net, opt_state)`` from the arrays (no copy: the same arrays)."""
        return eqx.combine(jax.tree_util.tree_unflatten(self._treedef, arrays), self._static)

    def __call__(self, arrays: list, x, labels, key) -> tuple[list, dict]:
        """One step; ``arrays`` are donated (do not use them again) and returned updated."""
        if self._schedules == ({},):  # XLA's default alone: the jit's own fast path
            return self._jitted(arrays, x, labels, key)
        if self._compiled is None:
            from fgc.training.compiling import compile_smallest
            lowered = self._jitted.lower(arrays, x, labels, key)
            self._compiled, self.options = compile_smallest(lowered, self._schedules)
        return self._compiled(arrays, x, labels, key)
