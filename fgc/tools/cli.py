"""The `fgc` command: a thin layer over the Python API.

Every user error is an :class:`~fgc.errors.FgError`, printed as a message with
exit status 1 (2 for bad command lines); a traceback means a bug in fgc.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fgc.errors import FgError, plural
from fgc.tools.common import add_aggregate_arguments, add_precision_argument


def _cmd_check(args) -> int:
    from fgc.front.overrides import load
    from fgc.graph.summary import summary_table
    from fgc.plan.credit import credit_table
    status = 0
    for path in args.specs:
        try:
            prog = load(path, args.set)
            if prog.train.algorithm:  # the algorithm the spec asks for must apply (E504-E507)
                for w in prog.plan().warnings:
                    print(w.render(prog.spec.source), file=sys.stderr)
        except FgError as e:
            print(e, file=sys.stderr)
            status = 1
            continue
        if args.credit:
            try:
                plan = prog.plan(args.algorithm or prog.train.algorithm or "lg-fg-a")
            except FgError as e:
                print(e, file=sys.stderr)
                status = 1
                continue
            print(credit_table(plan))
        if args.summary:
            print(summary_table(prog.graph))
        elif not args.credit:
            n = prog.graph.num_params()
            print(f"{path}: ok ({n:,} {'parameter' if n == 1 else 'parameters'})")
    return status


def _cmd_fmt(args) -> int:
    from fgc.front.fmt import format_spec
    from fgc.front.parse import MAX_SPEC_BYTES, parse_file
    status = 0
    for path in args.specs:
        try:
            spec = parse_file(path)
        except FgError as e:  # report it and format the other files
            print(e, file=sys.stderr)
            status = 1
            continue
        text = format_spec(spec)
        size = len(text.encode("utf-8"))
        if size > MAX_SPEC_BYTES:  # written, it could not be read back
            print(f"{path}: in canonical form the spec would be {size:,} bytes, over the limit "
                  f"of {MAX_SPEC_BYTES:,}; left as it is", file=sys.stderr)
            status = 1
            continue
        if args.check:
            if text != spec.source:
                print(f"{path}: not in canonical form", file=sys.stderr)
                status = 1
        elif args.write:
            _atomic_write(Path(path), text)
        else:
            sys.stdout.write(text)
    return status


def _cmd_viz(args) -> int:
    from fgc.plan.program import load
    from fgc.tools.viz import render, write_page
    prog = load(args.spec)
    if Path(args.output).suffix.lower() == ".html":  # the page: every algorithm, clickable
        write_page(prog, Path(args.output), args.algorithm)
    else:
        render(prog.plan(args.algorithm), Path(args.output))
    print(f"wrote {args.output}")
    return 0


def _cmd_train(args) -> int:
    from fgc.training.train import train
    board = None
    if getattr(args, "tensorboard", None) is not None:
        from fgc.tools.tensorboard import TensorBoardWriter
        board = TensorBoardWriter(args.tensorboard or Path(args.out) / "tensorboard")
    try:
        summary = train(args.spec, out=args.out, algorithm=args.algorithm, dataset=args.dataset,
                        data_dir=args.data_dir, resume=args.resume, epochs=args.epochs,
                        tangents=args.tangents, credit=args.credit,
                        aggregate=args.aggregate, chunk=args.chunk, batch_size=args.batch_size, seed=args.seed, steps=args.steps,
                        precision=args.precision,
                        checkpoint_every=args.checkpoint_every,
                        eval_train=not args.no_train_error, on_epoch=board)
    except KeyboardInterrupt:
        print(f"interrupted; the last checkpoint is in {args.out}; continue with the same "
              "command plus --resume", file=sys.stderr)
        return 130
    finally:
        if board is not None:
            board.close()
    err = summary["test_error"]
    if err is None:
        print(f"stopped at step {summary['steps']:,} before the first epoch ended; "
              f"{Path(args.out) / 'summary.json'}")
    else:
        print(f"{'done' if summary.get('finished', True) else 'stopped'}: test error {err:.2f}% "
              f"after {plural(summary['epochs'], 'epoch')}; {Path(args.out) / 'summary.json'}")
    return 0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgc", description="Compile and train local-learning "
                                "networks declared in .fg specs.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="check specs; exit 1 with every diagnostic if invalid")
    c.add_argument("specs", nargs="+")
    c.add_argument("--summary", action="store_true",
                   help="print per-layer output shapes and parameter counts")
    c.add_argument("--credit", action="store_true",
                   help="print the credit map: which loss replicas every site and weight answers to")
    c.add_argument("--algorithm", help="algorithm for --credit (default: the spec's, else lg-fg-a)")
    _add_set(c)
    c.set_defaults(fn=_cmd_check)

    f = sub.add_parser("fmt", help="print specs in canonical form")
    f.add_argument("specs", nargs="+")
    g = f.add_mutually_exclusive_group()
    g.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    g.add_argument("--check", action="store_true", help="exit 1 if a file is not canonical")
    f.set_defaults(fn=_cmd_fmt)

    v = sub.add_parser("viz", help="draw the loss/perturbation graph (.dot, .svg, .png, "
                       "or .html: an interactive page of every algorithm)")
    v.add_argument("spec")
    v.add_argument("-o", "--output", required=True)
    v.add_argument("--algorithm", default=None, help="algorithm to draw (default: the spec's; "
                   "for .html the one shown first)")
    v.set_defaults(fn=_cmd_viz)

    t = sub.add_parser("train", help="train a spec; writes metrics.jsonl, summary.json and "
                       "checkpoints to --out")
    t.add_argument("spec")
    t.add_argument("--out", required=True, help="run directory (metrics, summary, checkpoint)")
    t.add_argument("--algorithm", help="preset or spec algorithm (default: the spec's)")
    t.add_argument("--dataset", help="mnist, cifar10 or an .npz path (default: the spec's)")
    t.add_argument("--data-dir", help="folder with mnist.npz / cifar10-jpeg.zip, or "
                   "prepared by tensorflow-datasets (mnist/3.0.1/...) (searched before "
                   "$FGC_DATA_DIR, ./data, then tensorflow-datasets online)")
    t.add_argument("--epochs", type=_positive, help="epochs (default: the spec's)")
    t.add_argument("--batch-size", type=_positive, help="batch size (default: the spec's)")
    t.add_argument("--seed", type=_non_negative, help="seed (default: the spec's, else 0)")
    t.add_argument("--tangents", type=_positive,
                   help="tangents per step for forward-gradient estimators (default: the algorithm's)")
    t.add_argument("--credit", choices=("exact", "ignore_norm"),
                   help="how forward-gradient estimators credit replicated losses: exact "
                   "(unbiased) or ignore_norm (as Ren et al.'s released code; default: the "
                   "algorithm's)")
    add_aggregate_arguments(t)
    add_precision_argument(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out (or "
                   "start it there if it has no checkpoint yet); a larger --epochs extends it")
    t.add_argument("--steps", type=_positive, help="stop once the run has made N optimizer "
                   "steps (smoke runs, tests); --resume continues")
    t.add_argument("--checkpoint-every", metavar="N|TIME", help="checkpoint every N steps or "
                   "every TIME (30s, 5m); default: every tenth of an epoch or minute")
    t.add_argument("--no-train-error", action="store_true",
                   help="skip measuring the training-set error each epoch")
    t.add_argument("--tensorboard", nargs="?", const="", metavar="LOGDIR",
                   help="also write each epoch's metrics as TensorBoard event files, to "
                   "LOGDIR (default: OUT/tensorboard); needs tensorboardX")
    t.set_defaults(fn=_cmd_train)
    _add_set(t)

    from fgc.tools import bench, diagnose, plot, reproduce, verify
    verify.add_arguments(sub.add_parser("verify", help="check every parameter group's update "
                                        "against jax.grad of an independent reference"))
    plot.add_arguments(sub.add_parser("plot", help="draw test error and training loss per "
                                      "epoch of runs"))
    b = sub.add_parser("bench", help="time, memory and FLOPs of each algorithm's train step, "
                       "with ratios to BP")
    bench.add_arguments(b)
    _add_set(b)
    dg = sub.add_parser("diagnose", help="cosine and variance of an algorithm's gradient "
                        "estimates against the true gradient")
    diagnose.add_arguments(dg)
    _add_set(dg)
    reproduce.add_arguments(sub.add_parser("reproduce", help="train every row of a paper's "
                                           "table and write it next to the paper's numbers"))
    return p


def _add_set(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the spec's train, algorithm or group "
                        "sections, or a constant, e.g. train.optimizer.learning_rate=0.05, "
                        "train.epochs=3, const.AUX=mlp_aux, "
                        "group.heads.lr_scale=0.5, algorithm.lg-fg-a.estimator.tangents=4 "
                        "(repeatable)")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "set", None) and hasattr(args, "spec"):  # a loaded Program as the spec
            from fgc.front.overrides import load
            args.spec = load(args.spec, args.set)
        return args.fn(args)
    except FgError as e:
        print(e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fgc check --summary X | head -1`: the reader has what it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's final flush raises nothing
        return 141  # as if killed by SIGPIPE, like other Unix tools
    except Exception as e:  # the device ran out of memory: the user's setting, not a bug
        # Matched by name: importing jax here would slow every command's start-up.
        if "RESOURCE_EXHAUSTED" not in str(e) or type(e).__name__ != "JaxRuntimeError":
            raise
        first = str(e).strip().splitlines()[0]
        print(f"fgc {args.command}: the device ran out of memory ({first}); use a smaller "
              "--batch-size (or --chunk for many tangents), or a device with more memory",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
