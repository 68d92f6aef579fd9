"""What `fgc bench` and `fgc diagnose` share: loading a spec, argparse checks, byte sizes
and writing a file whole or not at all."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fgc.errors import FgError


def load_program(spec):
    """A loaded :class:`~fgc.plan.program.Program`, from a path or as given."""
    from fgc.plan.program import Program, load
    return spec if isinstance(spec, Program) else load(spec)


def int_at_least(low: int):
    """An argparse ``type`` accepting integers ≥ ``low``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {low}, got {text!r}")
        return n
    return parse


def add_aggregate_arguments(parser, *, many: bool = False) -> None:
    """``--aggregate`` and ``--chunk``: how forward-gradient estimators combine their K
    tangents and how many they evaluate at once (docs/language.md §3.8)."""
    from fgc.front.config import aggregations
    names = ", ".join(aggregations())
    if many:
        parser.add_argument("--aggregate", type=aggregate_list, metavar="A,B,...",
                            help=f"compare these aggregations of the K tangents ({names}): "
                            "cosine and variance against K for each, in diagnose.json and "
                            "aggregate.png (instead of weight vs activity perturbation)")
    else:
        parser.add_argument("--aggregate", choices=aggregations(),
                            help=f"how forward-gradient estimators combine their K tangents "
                            f"({names}; default: the algorithm's)")
    parser.add_argument("--chunk", type=int_at_least(1), metavar="C",
                        help="evaluate the K tangents C at a time (memory grows with C, not "
                        "K; the estimates are the same); for project(...) algorithms, the "
                        "per-example jvps that batch statistics couple, C at a time")


def aggregate_list(text: str) -> tuple[str, ...]:
    from fgc.front.config import aggregations
    names = tuple(dict.fromkeys(t for t in text.replace(" ", "").split(",") if t))
    bad = [n for n in names if n not in aggregations()]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated aggregations among {', '.join(aggregations())}, got "
            f"{text!r}")
    return names


def gib(n: float) -> str:
    """Bytes in GiB, one decimal."""
    return f"{n / 2**30:.1f} GiB"


def gib_or_mib(n: float) -> str:
    """Bytes in GiB, or in MiB below one GiB."""
    return gib(n) if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def write_whole(path: Path, text: str, error: type[FgError]) -> None:
    """Writes ``text`` through a temporary file renamed into place, so ``path`` holds the
    whole text or what it held before; an OSError becomes ``error``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise error(f"cannot write `{path}`: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def add_precision_argument(parser) -> None:
    """``--precision``: how the train step's matmuls and convolutions are computed
    (``train.precision`` of a spec; fgc.lowering.modules.PRECISIONS)."""
    from fgc.lowering.modules import PRECISIONS
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="matmuls and convolutions: bfloat16 (bfloat16 operands, float32 "
                        "sums; parameters, optimizer state, norms and losses stay float32), "
                        "float32 (full float32 products on every device) or default (the "
                        "device's own: TF32 on recent NVIDIA GPUs); default: the spec's "
                        "train.precision, else default")
