"""`fgc diagnose` on the command line: its arguments and what running it prints."""

from __future__ import annotations

import sys

from fgc.tools.common import add_aggregate_arguments, int_at_least
from fgc.tools.diagnose.base import (DEFAULT_BATCHES, DEFAULT_DRAWS, DEFAULT_TANGENTS,
                                     DEFAULT_WARMUP)
from fgc.tools.diagnose.measure import diagnose
from fgc.tools.diagnose.report import format_table, save


def _tangent_list(text: str) -> tuple[int, ...]:
    import argparse
    try:
        ks = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        ks = ()
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,4,16,64, got {text!r}")
    return ks


def add_arguments(parser) -> None:
    """Adds ``fgc diagnose``'s arguments to an :mod:`argparse` (sub)parser and sets ``fn=run``."""
    parser.description = (
        "Measure how good an algorithm's forward-gradient estimates are: cosine similarity with "
        "the true gradient of its target and with the end-to-end gradient, and variance, per "
        "block and tangent count K, for weight and activity perturbation side by side, "
        "compared with Ren et al.'s Table 1. Writes diagnose.json and three PNG figures.")
    parser.add_argument("spec", help="the .fg spec")
    parser.add_argument("--algorithm", metavar="NAME",
                        help="forward-gradient algorithm, preset or the spec's (default: the "
                        "spec's train.algorithm)")
    parser.add_argument("--tangents", type=_tangent_list, default=DEFAULT_TANGENTS,
                        metavar="K,K,...", help="tangent counts K (default: 1,4,16,64)")
    parser.add_argument("--batches", type=int_at_least(1), default=DEFAULT_BATCHES,
                        help=f"batches to average over (default: {DEFAULT_BATCHES})")
    parser.add_argument("--draws", type=int_at_least(2), default=DEFAULT_DRAWS,
                        help=f"independent estimates per batch and K (default: {DEFAULT_DRAWS})")
    parser.add_argument("--batch-size", type=int_at_least(1),
                        help="examples per batch (default: the spec's)")
    parser.add_argument("--dataset", help="mnist, cifar10, an .npz path, or synthetic (random "
                        "images of the spec's input shape; default: the spec's dataset)")
    parser.add_argument("--data-dir", help="folder with mnist.npz / cifar10-jpeg.zip, or "
                        "prepared by tensorflow-datasets (mnist/3.0.1/...) (searched before "
                        "$FGC_DATA_DIR, ./data, then tensorflow-datasets online)")
    parser.add_argument("--seed", type=int_at_least(0), help="seed (default: the spec's)")
    parser.add_argument("--warmup-steps", type=int_at_least(0), default=DEFAULT_WARMUP,
                        help="training steps with the algorithm before measuring, so the "
                        "zero-initialised readout passes an end-to-end gradient (default: "
                        f"{DEFAULT_WARMUP}; 0 reports it as undefined)")
    parser.add_argument("--warmup-algorithm", metavar="NAME",
                        help="the algorithm the warm-up steps train with (default: "
                        "--algorithm): one warm-up algorithm for several diagnoses measures "
                        "them all on the same trained network, e.g. lg-bp, which also trains "
                        "the auxiliary heads that local guesses go through")
    parser.add_argument("--credit", choices=("exact", "ignore_norm"),
                        help="credit rule of the estimators (default: the algorithm's)")
    add_aggregate_arguments(parser, many=True)
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="folder for diagnose.json and the figures (created if missing)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(fn=run)


def run(args) -> int:
    """Runs ``fgc diagnose`` from parsed arguments; FgError propagates, for the CLI to print."""
    def log(line: str) -> None:
        print(f"fgc diagnose: {line}", file=sys.stderr, flush=True)

    common = dict(tangents=args.tangents, batches=args.batches, draws=args.draws,
                  batch_size=args.batch_size, dataset=args.dataset, data_dir=args.data_dir,
                  seed=args.seed, warmup_steps=args.warmup_steps,
                  warmup_algorithm=getattr(args, "warmup_algorithm", None),
                  credit=getattr(args, "credit", None), chunk=getattr(args, "chunk", None),
                  log=None if getattr(args, "quiet", False) else log)
    if getattr(args, "aggregate", None):
        from fgc.tools.diagnose.aggregate import (diagnose_aggregations, format_aggregations,
                                                  save_aggregations)
        result = diagnose_aggregations(args.spec, args.algorithm, aggregations=args.aggregate,
                                       **common)
        written = save_aggregations(result, args.out)
        print(format_aggregations(result))
    else:
        result = diagnose(args.spec, args.algorithm, **common)
        written = save(result, args.out)
        print(format_table(result))
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0
