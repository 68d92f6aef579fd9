"""Block instances by position: ``blocks[7]``, ``blocks[0:7]``, ``basic[-1]``.

One rule, used by loss targets (:mod:`fgc.graph.losses`) and by group selectors
(:mod:`fgc.plan.program`): ``blocks`` lists every block instance in network order, a
block name the instances of that block; an index counts from 0 (negative from the
end), a range ``start:stop`` excludes ``stop``, as in Python. Unlike Python, an index
or a bound outside the list, or a range that selects nothing, is an error (E208):
a spec that names a block that is not there is wrong, not empty.
"""

from __future__ import annotations

from fgc.front import syntax as S
from fgc.front.fmt import format_value


class IndexProblem(Exception):
    """Why an index selects nothing valid: ``code`` (E206 or E208), message and hint."""

    def __init__(self, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.code, self.hint = code, hint


def show(sel: S.Index) -> str:
    return format_value(sel)


def bound(v) -> int | None:
    """An index bound as an int (``None`` when omitted); E206 for anything else."""
    if v is None:
        return None
    if isinstance(v, S.Number) and isinstance(v.value, int):
        return v.value
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise IndexProblem("E206", "an index or bound of block instances must be a whole number",
                       "e.g. blocks[7], blocks[0:7] or blocks[-1]; a constant holding one works too")


def select(sel: S.Index, instances: list[str], start: int | None, stop: int | None) -> list[str]:
    """The instances ``sel`` picks from ``instances`` (all of its ``base``, in order).

    Raises:
      IndexProblem: E208 for an index or bound out of range or an empty range.
    """
    n = len(instances)
    what = "the network has" if sel.base == "blocks" else f"block `{sel.base}` has"
    noun = "block instance" if sel.base == "blocks" else "instance"
    have = (f"{what} {n} {noun}{'s' if n != 1 else ''}"
            + (f" ({sel.base}[0] to {sel.base}[{n - 1}], or {sel.base}[-1] for the last)"
               if n else ""))
    if not sel.is_range:
        if not -n <= start < n:
            raise IndexProblem("E208", f"`{show(sel)}` is out of range: {have}",
                               f"use an index from 0 to {n - 1}" if n else None)
        return [instances[start]]
    for b in (start, stop):
        if b is not None and not -n <= b <= n:
            raise IndexProblem("E208", f"`{show(sel)}` is out of range: {have}",
                               f"bounds go from {-n} to {n}; `{sel.base}[a:b]` excludes b")
    picked = instances[slice(start, stop)]
    if not picked:
        raise IndexProblem("E208", f"`{show(sel)}` selects no instance: {have}",
                           f"`{sel.base}[a:b]` takes a up to, not including, b")
    return picked
