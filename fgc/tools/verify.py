"""``fgc verify SPEC``: the command line over :mod:`fgc.learning.verify`.

Exit 0 when every parameter group of every algorithm checked matches its rule,
1 with the biased layers named, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fgc.errors import FgError, SpecError
from fgc.tools.common import add_aggregate_arguments, int_at_least


class VerifyError(FgError):
    """A verify request that cannot run (no algorithm applies, bad output path)."""


def algorithms_to_check(prog, names: str | None) -> list[str]:
    """The algorithms named (comma list, or ``all``), else the spec's own, else every
    algorithm the spec can be planned under."""
    if names and names != "all":
        return [n.strip() for n in names.split(",") if n.strip()]
    if names is None and prog.train.algorithm:
        return [prog.train.algorithm]
    out = []
    for name in sorted(prog.algorithms):
        try:
            prog.plan(name)
        except SpecError:
            continue
        out.append(name)
    if not out:
        raise VerifyError(f"{prog.path}: no algorithm can be planned on this spec; "
                          "`fgc check` says why")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("--algorithm", help="algorithm(s) to check, comma-separated, or `all` "
                   "(default: the spec's, else every algorithm that applies)")
    p.add_argument("--credit", choices=("exact", "ignore_norm"),
                   help="credit rule of the forward-gradient estimators (default: the algorithm's)")
    p.add_argument("--tangents", type=int_at_least(1), help="tangents per estimate (default: the "
                   "algorithm's)")
    add_aggregate_arguments(p)
    p.add_argument("--samples", type=int_at_least(1), default=1000,
                   help="estimates averaged per check (default 1000)")
    p.add_argument("--batch-size", type=int_at_least(1), default=4,
                   help="examples in the random batch (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=1e-6,
                   help="family-wise false-alarm rate of the z bound (default 1e-6)")
    p.add_argument("--json", help="also write the reports to this file")
    p.set_defaults(fn=run)


def run(args) -> int:
    from fgc.learning.verify import INCONCLUSIVE_HINT, verify_plan
    from fgc.plan.program import load
    from fgc.training.train import with_estimator

    if not 0 < args.alpha < 1:
        raise VerifyError(f"--alpha must be between 0 and 1, got {args.alpha}")
    prog = load(args.spec)
    if prog.train.precision != "default":  # the checks need float64 round-off, not bfloat16's
        print(f"fgc verify: {prog.path}: train.precision = {prog.train.precision} is not used "
              "here; verify always runs in float64 at full precision", file=sys.stderr)
    reports = []
    for name in algorithms_to_check(prog, args.algorithm):
        plan = prog.plan(name)
        forward = any(plan.estimator_of(g).kind == "forward" for g in set(plan.assignment.values()))
        changes = {k: getattr(args, k, None) for k in ("tangents", "credit", "aggregate", "chunk")}
        if forward and any(v is not None for v in changes.values()):
            plan = with_estimator(plan, **changes)
        print(f"fgc verify: {args.spec} · {name} …", file=sys.stderr, flush=True)
        r = verify_plan(plan, samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                        alpha=args.alpha)
        print(r.format())
        reports.append(r)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
        except OSError as e:
            raise VerifyError(f"cannot write {args.json}: {e.strerror}") from None
    bad = [f"{r.algorithm}: {', '.join(r.biased)}" for r in reports if not r.ok]
    if bad:
        print("fgc verify: biased updates — " + "; ".join(bad), file=sys.stderr)
        return 1
    unknown = [r.algorithm for r in reports if r.inconclusive]
    if unknown:  # a pass that compared zeros with zeros is no pass
        print(f"fgc verify: inconclusive for {', '.join(unknown)}: every forward-gradient "
              f"node's reference gradient is zero on the random batch of {args.batch_size}; "
              f"{INCONCLUSIVE_HINT}", file=sys.stderr)
        return 1
    return 0
