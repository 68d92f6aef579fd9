"""`fgc bench --profile DIR`: a jax.profiler trace of a few train steps per algorithm, and
a summary of where those steps went, read back from the trace itself.

The trace is the profiler's own format (``DIR/ALGORITHM/plugins/profile/RUN/*.xplane.pb``
and a Chrome trace ``*.trace.json.gz`` beside it): open the ``.trace.json.gz`` in
https://ui.perfetto.dev, or point TensorBoard (with ``tensorboard-plugin-profile``) at
``DIR``. The summary splits each profiled step's wall time into the time XLA's threads
were busy and the rest (Python, argument handling, dispatch: host overhead), and lists
the XLA operations (fusions, dots, convolutions) that took the most time. With the
compiled module's text it also splits the time by kind of operation (matrix products,
layout copies, reductions, elementwise fusions: :mod:`fgc.tools.bench.anatomy`) with the
FLOPs and bytes each kind handled, which set against the device's ceilings
(:mod:`fgc.tools.bench.ceilings`) say which part of a step is far from what the device can do.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fgc.tools.bench.anatomy import by_kind, classify
from fgc.tools.bench.base import BenchError

STEP = "fgc train step"  # the name of each profiled step's annotation in the trace


def check_profile_dir(path: Path) -> None:
    """Fails before minutes of measuring when ``path`` cannot hold the traces."""
    if path.exists() and not path.is_dir():
        raise BenchError(f"cannot write profiles to `{path}`: it is a file; give a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BenchError(f"cannot write profiles to `{path}`: `{probe}` is not a folder")


def trace_steps(out: Path, steps: int, step: Callable[[int], Any],
                hlo_text: str | None = None) -> dict[str, Any]:
    """Runs ``step(i)`` for ``i < steps`` (each must block until its results are ready)
    under the profiler, writing the trace under ``out``, and summarises it
    (by kind of operation too when ``hlo_text``, the compiled step's module, is given)."""
    import jax

    out.mkdir(parents=True, exist_ok=True)
    try:
        with jax.profiler.trace(str(out)):
            for i in range(steps):
                with jax.profiler.StepTraceAnnotation(STEP, step_num=i):
                    step(i)
    except OSError as e:
        raise BenchError(f"cannot write the profile under `{out}`: {e.strerror or e}") from None
    traces = sorted(out.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        return {"dir": str(out), "trace": None, "summary": None}
    return {"dir": str(out), "trace": str(traces[-1]),
            "summary": summarise(traces[-1], hlo_text=hlo_text)}


def summarise(trace: Path, top: int = 8, hlo_text: str | None = None) -> dict[str, Any]:
    """Where the annotated steps of a Chrome trace went.

    Returns:
      ``steps`` (how many annotated steps), ``step_ms`` (their mean wall time),
      ``xla_ms`` (mean time per step with some XLA thread busy: the union of the
      intervals of every event inside the step on a thread other than the host's),
      ``host_ms`` (the rest), and ``ops``: the ``top`` XLA event names by total time
      per step, each ``{"name", "ms", "count"}`` (``count`` per step); with
      ``hlo_text``, ``kinds``: :func:`fgc.tools.bench.anatomy.by_kind` of every operation.
    """
    with gzip.open(trace, "rt") as f:
        events = json.load(f).get("traceEvents", [])
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    steps = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == STEP]
    # The thread that carries the step annotations is the host's (Python's): it is named
    # after the process, so it is found by what it holds, not by its name.
    host = {(e.get("pid"), e.get("tid")) for e in spans if e["name"] == STEP}
    if not steps:
        return {"steps": 0, "step_ms": None, "xla_ms": None, "host_ms": None, "ops": []}

    def in_step(e) -> bool:
        return any(a <= e["ts"] and e["ts"] + e["dur"] <= b for a, b in steps)

    xla = [e for e in spans if (e.get("pid"), e.get("tid")) not in host and in_step(e)]
    busy = _union([(e["ts"], e["ts"] + e["dur"]) for e in xla])
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in xla:
        if not _is_op(e["name"]):
            continue
        per_op[e["name"]][0] += e["dur"]
        per_op[e["name"]][1] += 1
    n = len(steps)
    step_us = sum(b - a for a, b in steps) / n
    ops = sorted(per_op.items(), key=lambda kv: -kv[1][0])[:top]
    summary = {"steps": n, "step_ms": step_us / 1e3, "xla_ms": busy / n / 1e3,
               "host_ms": (step_us - busy / n) / 1e3,
               "ops": [{"name": k, "ms": v[0] / n / 1e3, "count": v[1] / n} for k, v in ops]}
    if hlo_text:
        summary["kinds"] = by_kind(per_op, classify(hlo_text), n)
    return summary


def _is_op(name: str) -> bool:
    """XLA's operations (``dot.7``, ``ynn_fusion.16``, ``while.99``), not the runtime's
    spans around them (``ThunkExecutor::Execute``), their end markers or Python frames."""
    return "::" not in name and not name.startswith(("$", "end: "))


def _union(intervals: list[tuple[float, float]]) -> float:
    """The total length covered by ``intervals`` (threads run in parallel: overlapping
    busy time counts once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def format_profile(name: str, prof: dict[str, Any],
                   ceilings: dict[str, Any] | None = None) -> list[str]:
    """Lines for the report: where the trace is and where the steps went."""
    lines = [f"profile of {name}: {prof['trace'] or prof['dir'] + ' (no Chrome trace written)'}"]
    s = prof.get("summary")
    if not s or not s["steps"]:
        return lines
    share = s["xla_ms"] / s["step_ms"] if s["step_ms"] else 0.0
    lines.append(f"  {s['steps']} steps, {s['step_ms']:.2f} ms each: XLA busy "
                 f"{s['xla_ms']:.2f} ms ({share:.0%}), host {s['host_ms']:.2f} ms")
    for op in s["ops"]:
        lines.append(f"    {op['ms']:8.3f} ms  ×{op['count']:<4g} {op['name']}")
    if s.get("kinds"):
        lines.append("  by kind (time summed over XLA's threads; bytes = operands + result; a rate "
                     "above the stream ceiling means operands that stayed in cache):")
        for kind, r in s["kinds"].items():
            rate = ""
            if r["gflop_per_s"]:
                rate += f"  {r['gflop']:.2f} GFLOP at {r['gflop_per_s']:.1f} GFLOP/s"
                if ceilings and ceilings.get("matmul_default"):
                    rate += f" ({r['gflop_per_s'] / ceilings['matmul_default']:.0%} of the matmul ceiling)"
            elif r["gbyte_per_s"]:
                rate += f"  {r['gbyte']:.2f} GB at {r['gbyte_per_s']:.1f} GB/s"
                if ceilings and ceilings.get("stream"):
                    rate += f" ({r['gbyte_per_s'] / ceilings['stream']:.0%} of the stream ceiling)"
            lines.append(f"    {kind:<12} {r['ms']:9.2f} ms  ×{r['ops']:<5g}{rate}")
    return lines


def format_ceilings(c: dict[str, Any]) -> str:
    """One line: the device's measured ceilings (:func:`fgc.tools.bench.ceilings.measure_ceilings`)."""
    return (f"device ceilings (measured): matmul {c['matmul_n']}² fp32 {c['matmul_fp32']:.1f}, "
            f"default float32 {c['matmul_default']:.1f}, bf16 {c['matmul_bf16']:.1f} GFLOP/s; "
            f"stream 2x+1 {c['stream']:.1f} GB/s")
