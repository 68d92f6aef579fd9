"""`fgc bench`: compile time, step time, memory and FLOPs of a spec under each algorithm.

:func:`bench_spec` builds the train step of one spec under several algorithms in one
process, side by side, on synthetic data of the spec's input shape (no dataset needed),
and measures for each:

* compile seconds: tracing plus XLA compilation, done ahead of time
  (``eqx.filter_jit(...).lower(...).compile()``), so no step is timed with compilation in it;
* step time: median, quartiles, min and max of ``steps`` steps after ``warmup`` warm-up
  steps, each one ``jax.block_until_ready``; images/s = batch / median;
* FLOPs per step from XLA's cost analysis, and achieved FLOP/s = FLOPs / median;
* memory: the compiled step's footprint (arguments + outputs − donated-and-aliased + XLA
  scratch) from XLA's memory analysis; on GPU also the device's ``peak_bytes_in_use``
  (a high-water mark of the whole process, so it only grows from one algorithm to the next);
* every figure's ratio to BP's when ``bp`` is among the algorithms.

It then compares the fused replicated local loss (:func:`fgc.lowering.replicated.replicated_xent`)
with the naive masked one (:func:`fgc.lowering.replicated.naive_replicated_xent`) at the spec's own
batch, patch, group, channel and class counts: JVP and VJP time and compiled memory. The
naive version is compiled on abstract shapes first and only run when XLA says it fits under
a memory limit (4 GiB by default): at LocalMixer M/8/16 sizes its VJP holds one copy of the
block output per replica, 16 GiB at batch 128.

Example:
    >>> from fgc.tools.bench import bench_spec, format_report
    >>> result = bench_spec("specs/mixer-s-1-1.fg", ["bp", "lg-fg-a"], steps=10)  # doctest: +SKIP
    >>> print(format_report(result))                                              # doctest: +SKIP

Timings are wall-clock on a shared machine: run nothing else alongside for numbers to
publish, and read the quartiles before trusting a small ratio.
"""

from fgc.tools.bench.base import NAIVE_LIMIT_BYTES, BenchError
from fgc.tools.bench.cli import add_arguments, run
from fgc.tools.bench.measure import bench_spec, supported_algorithms
from fgc.tools.bench.replicated import compare_replicated, replicated_configs
from fgc.tools.bench.report import format_replicated, format_report, write_json

__all__ = ["BenchError", "NAIVE_LIMIT_BYTES", "add_arguments", "bench_spec",
           "compare_replicated", "format_replicated", "format_report", "replicated_configs",
           "run", "supported_algorithms", "write_json"]
