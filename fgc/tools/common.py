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
