"""The typed syntax tree of a .fg spec.

Every node is a frozen dataclass carrying the :class:`~fgc.errors.Span` it was
parsed from. Spans are excluded from equality so that ``parse(fmt(spec)) ==
spec`` holds although formatting moves text around.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from fgc.errors import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


# --- values -----------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span | None = _span()


@dataclass(frozen=True)
class String:
    value: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span | None = _span()


@dataclass(frozen=True)
class Name:
    id: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: "Value"
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Value", ...] = ()
    kwargs: tuple[Kwarg, ...] = ()
    span: Span | None = _span()

    def kwarg(self, name: str) -> "Value | None":
        for kw in self.kwargs:
            if kw.name == name:
                return kw.value
        return None


@dataclass(frozen=True)
class List:
    items: tuple["Value", ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + * /
    left: "Value"
    right: "Value"
    span: Span | None = _span()


@dataclass(frozen=True)
class Index:
    """``base[i]`` or ``base[start:stop]``: block instances by position (0-based, negative
    from the end, ranges exclude ``stop``), where ``base`` is ``blocks`` or a block name."""

    base: str
    start: "Value | None"
    stop: "Value | None" = None
    is_range: bool = False
    span: Span | None = _span()


Value = Union[Number, String, Bool, Name, Call, List, BinOp, Index]


# --- dataflow ---------------------------------------------------------------


@dataclass(frozen=True)
class Repeat:
    """``stage * count``: a block applied ``count`` times in sequence."""

    stage: Union[Name, Call]
    count: int
    span: Span | None = _span()


Stage = Union[Name, Call, Repeat]


@dataclass(frozen=True)
class Pipe:
    stages: tuple[Stage, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Assign:
    name: str
    pipe: Pipe
    span: Span | None = _span()


@dataclass(frozen=True)
class Out:
    pipe: Pipe
    span: Span | None = _span()


Statement = Union[Assign, Out]


# --- top-level items --------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """``, name = value`` after an input or loss declaration."""

    name: str
    value: Value
    span: Span | None = _span()


@dataclass(frozen=True)
class Setting:
    """``name = value`` inside an algorithm, train or group section."""

    name: str
    value: Value
    span: Span | None = _span()


@dataclass(frozen=True)
class SpecDecl:
    title: str
    span: Span | None = _span()


@dataclass(frozen=True)
class InputDecl:
    name: str
    kind: Call
    options: tuple[Option, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class ConstDecl:
    name: str
    value: Value
    span: Span | None = _span()


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[str, ...]
    body: tuple[Statement, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class HeadDef:
    name: str
    params: tuple[str, ...]
    pipe: Pipe
    span: Span | None = _span()


@dataclass(frozen=True)
class NetworkDef:
    body: tuple[Statement, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class LossDecl:
    name: str
    head: Union[Name, Call]
    target: Value
    options: tuple[Option, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class Section:
    """``algorithm NAME {..}``, ``train {..}`` or ``group NAME {..}``."""

    kind: str
    name: str | None
    settings: tuple[Setting, ...]
    span: Span | None = _span()

    def get(self, key: str) -> Value | None:
        for s in self.settings:
            if s.name == key:
                return s.value
        return None


Item = Union[SpecDecl, InputDecl, ConstDecl, BlockDef, HeadDef, NetworkDef, LossDecl, Section]


@dataclass(frozen=True)
class SpecFile:
    items: tuple[Item, ...]
    path: str = field(default="<spec>", compare=False)
    source: str = field(default="", compare=False, repr=False)

    def of(self, kind: type) -> list:
        return [i for i in self.items if isinstance(i, kind)]
