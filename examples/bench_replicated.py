"""Fused vs naive replicated local loss: time and compiled memory of a JVP and a VJP.

    python examples/bench_replicated.py --batch 16 --patches 64 --channels 512 --groups 16

A thin script over :func:`fgc.tools.bench.compare_replicated`; ``fgc bench SPEC`` makes the same
comparison at a spec's own sizes. The naive version runs the head once per patch×group
replica (it is the test oracle, never used for training) and is skipped when XLA says it
needs more than ``--limit-gib``.
"""

from __future__ import annotations

import argparse

from fgc.tools.bench import NAIVE_LIMIT_BYTES, compare_replicated, format_replicated


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--limit-gib", type=float, default=NAIVE_LIMIT_BYTES / 2**30)
    a = ap.parse_args()
    result = compare_replicated(a.batch, a.patches, a.channels, a.groups, a.classes,
                                steps=a.repeats, warmup=a.warmup,
                                naive_limit_bytes=int(a.limit_gib * 2**30))
    print(format_replicated(result))


if __name__ == "__main__":
    main()
