"""`fgc bench` on the command line: its arguments and what running it prints."""

from __future__ import annotations

import sys
from pathlib import Path

from fgc.tools.bench.base import NAIVE_LIMIT_BYTES
from fgc.tools.bench.measure import bench_spec
from fgc.tools.bench.report import _check_writable, format_report, write_json
from fgc.tools.common import add_precision_argument, int_at_least


def _names(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def add_arguments(parser) -> None:
    """Adds ``fgc bench``'s arguments to an :mod:`argparse` (sub)parser and sets ``fn=run``."""
    parser.description = ("Compile time, step time, memory and FLOPs of a spec's train step "
                          "under each algorithm, side by side on synthetic data, plus the "
                          "fused vs naive replicated local loss.")
    parser.add_argument("spec", help="the .fg spec to measure")
    parser.add_argument("--algorithms", type=_names, default=None, metavar="A,B,...",
                        help="comma-separated algorithms (default: every preset the spec "
                             "can run)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=128,
                        help="examples per step (default: 128)")
    parser.add_argument("--steps", type=int_at_least(1), default=20,
                        help="timed steps per algorithm (default: 20)")
    parser.add_argument("--warmup", type=int_at_least(0), default=3,
                        help="untimed steps before them (default: 3)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed (default: 0)")
    add_precision_argument(parser)
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write every measurement to FILE as JSON")
    parser.add_argument("--no-replicated", action="store_true",
                        help="skip the fused vs naive replicated-loss comparison")
    parser.add_argument("--naive-limit-gib", type=float, default=NAIVE_LIMIT_BYTES / 2**30,
                        metavar="GIB", help="run the naive replicated loss only when XLA "
                        "says it needs at most this much (default: 4)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="also trace a few more steps of each algorithm with "
                             "jax.profiler into DIR/ALGORITHM/ (open the .trace.json.gz in "
                             "ui.perfetto.dev) and print where they went")
    parser.add_argument("--blockwise", choices=("on", "off"), default="on",
                        help="run a greedy algorithm's pieces (each block with its local "
                             "heads) one after another in the step, as fgc train does "
                             "(on, the default), or the whole network at once (off)")
    parser.add_argument("--profile-steps", type=int_at_least(1), default=3, metavar="N",
                        help="steps traced per algorithm with --profile (default: 3)")
    parser.set_defaults(fn=run)


def run(args) -> int:
    """Runs ``fgc bench`` from parsed arguments: progress on stderr, the report on stdout.

    FgError propagates, for the CLI to print.
    """
    if args.json:
        _check_writable(Path(args.json))  # fail before minutes of measuring, not after
    result = bench_spec(args.spec, args.algorithms, batch_size=args.batch_size,
                        steps=args.steps, warmup=args.warmup, seed=getattr(args, "seed", 0),
                        replicated=not args.no_replicated,
                        naive_limit_bytes=int(getattr(args, "naive_limit_gib", 4.0) * 2**30),
                        log=lambda line: print(f"fgc bench: {line}", file=sys.stderr,
                                               flush=True),
                        profile_dir=getattr(args, "profile", None),
                        profile_steps=getattr(args, "profile_steps", 3),
                        precision=getattr(args, "precision", None),
                        blockwise=getattr(args, "blockwise", "on") == "on")
    print(format_report(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0
