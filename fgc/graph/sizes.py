"""How much memory a checked network needs, and E305 for sizes no machine holds.

The estimate is a lower bound in float32: every parameter once (the optimizer state
and gradients add more) and every node's output for one batch, times the tangents a
forward-gradient estimator carries at once. Only absurd sizes are refused (over
:data:`LIMIT_BYTES`, more than any single accelerator or host holds): a typo such as
``dense(1000000000000)`` is reported with the numbers instead of crashing in XLA.
"""

from __future__ import annotations

import math

from fgc.graph.build import Diags
from fgc.graph.ir import Graph

LIMIT_BYTES = 10**12  # 1 TB
BYTES_PER_NUMBER = 4  # float32
_UNITS = ("bytes", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human(n: int | float) -> str:
    """``36 TB``: decimal units, as disks and accelerators are sold."""
    if n < 1000:
        return f"{int(n)} bytes"
    k = min(int(math.log10(n) // 3), len(_UNITS) - 1)
    v = n / 1000 ** k
    text = f"{v:,.0f}" if v >= 10 else f"{v:.1f}".removesuffix(".0")
    return f"{text} {_UNITS[k]}"


def parameters(graph: Graph) -> tuple[int, str | None]:
    """Parameters of the network and the node that holds the most."""
    per = {n: graph.node(n).num_params for n in graph.g}
    return sum(per.values()), max(per, key=per.__getitem__, default=None)


def activations(graph: Graph) -> tuple[int, str | None]:
    """Numbers computed per example (every node's output) and the largest node."""
    per = {n: math.prod(graph.node(n).shape) for n in graph.g if graph.node(n).shape is not None}
    return sum(per.values()), max(per, key=per.__getitem__, default=None)


def check(graph: Graph, batch_size: int, diags: Diags, *, tangents: int = 1,
          why: str = "") -> None:
    """E305 when the parameters or one step's activations need more than :data:`LIMIT_BYTES`."""
    n, big = parameters(graph)
    if n * BYTES_PER_NUMBER > LIMIT_BYTES:
        node = graph.node(big)
        diags.add("E305", f"the network needs {human(n * BYTES_PER_NUMBER)} of parameters "
                  f"({n:,} numbers; `{big}` alone has {node.num_params:,})", node.span,
                  f"fgc refuses more than {human(LIMIT_BYTES)}: check the sizes (a typo in a "
                  "width, `classes`?)")
        return
    a, big = activations(graph)
    need = a * batch_size * tangents * BYTES_PER_NUMBER
    if need > LIMIT_BYTES:
        node = graph.node(big)
        times = f" × {tangents:,} tangents" if tangents > 1 else ""
        diags.add("E305", f"one training step needs {human(need)} of activations ({a:,} numbers "
                  f"per example × batch of {batch_size:,}{times}; `{big}` gives "
                  f"{math.prod(node.shape):,} per example){why}", node.span,
                  f"fgc refuses more than {human(LIMIT_BYTES)}: lower the batch size"
                  + (", the tangents" if tangents > 1 else "") + " or the sizes")


def max_tangents(plan) -> int:
    """The most tangents any forward-gradient estimator of a plan carries at once (its
    ``chunk`` where it evaluates them in chunks)."""
    ests = [plan.algorithm.estimator, *(g.estimator for g in plan.groups.values())]
    return max([min(e.tangents, e.chunk or e.tangents) for e in ests
                if e is not None and e.kind == "forward"], default=1)
