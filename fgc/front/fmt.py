"""The canonical printer behind ``fgc fmt``.

:func:`format_spec` prints a :class:`~fgc.front.syntax.SpecFile` in canonical form:

* items in source order, separated by one blank line; consecutive ``const``,
  ``head`` and ``loss`` lines stay together when they were written together;
* two-space indentation inside braces, ``key = value`` in sections, options
  and keyword arguments, ``f(a, b, k = v)`` in calls, `` | `` between stages;
* pipes longer than :data:`WIDTH` characters broken before ``|``, continuation
  lines aligned under the first ``|``;
* numbers printed so that they parse back to the same value and type, strings
  re-escaped.

The syntax tree has no comments, so they are recovered from ``spec.source``:
a block of full-line comments travels with the item, statement, setting or
pipe stage that follows it (or with the closing ``}`` / end of file when
nothing follows), and an end-of-line comment with the construct it ends. Every
comment of the source appears exactly once in the output. Blank lines between
statements and settings, and around comments, are kept (at most one).

``parse(format_spec(parse(x))) == parse(x)`` and ``format_spec`` is idempotent.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field

from fgc.front import syntax as S

WIDTH = 92  # pipes longer than this are broken before `|`
INDENT = "  "

# Consecutive items of these kinds stay together (no blank line) when the
# source writes them together.
_GROUPABLE = (S.ConstDecl, S.HeadDef, S.LossDecl)


# --- values ------------------------------------------------------------------


def format_number(x: int | float) -> str:
    """Prints a number so that the grammar reads back the same value and type."""
    if isinstance(x, bool):  # pragma: no cover - booleans are S.Bool
        raise TypeError("a boolean is not a number")
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        raise ValueError("NaN cannot be written in a .fg spec")
    if math.isinf(x):
        return "1e999" if x > 0 else "-1e999"
    r = repr(float(x))  # the shortest text that reads back to the same float
    if "e" in r:  # 1e-05 -> 1e-5, 1e+22 -> 1e22
        mant, exp = r.split("e")
        r = f"{mant}e{int(exp)}"
    return r


def format_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PREC = {"+": 1, "*": 2, "/": 2}


def format_value(v: S.Value) -> str:
    if isinstance(v, S.Bool):
        return "true" if v.value else "false"
    if isinstance(v, S.Number):
        return format_number(v.value)
    if isinstance(v, S.String):
        return format_string(v.value)
    if isinstance(v, S.Name):
        return v.id
    if isinstance(v, S.Call):
        parts = [format_value(a) for a in v.args]
        parts += [f"{k.name} = {format_value(k.value)}" for k in v.kwargs]
        return f"{v.func}({', '.join(parts)})"
    if isinstance(v, S.List):
        return "[" + ", ".join(format_value(x) for x in v.items) + "]"
    if isinstance(v, S.Index):
        bound = lambda b: "" if b is None else format_value(b)
        inner = f"{bound(v.start)}:{bound(v.stop)}" if v.is_range else format_value(v.start)
        return f"{v.base}[{inner}]"
    if isinstance(v, S.BinOp):
        p = _PREC[v.op]
        left, right = format_value(v.left), format_value(v.right)
        # Operators are left-associative: a right operand of equal precedence
        # needs parentheses to keep the tree's shape.
        if isinstance(v.left, S.BinOp) and _PREC[v.left.op] < p:
            left = f"({left})"
        if isinstance(v.right, S.BinOp) and _PREC[v.right.op] <= p:
            right = f"({right})"
        return f"{left} {v.op} {right}"
    raise TypeError(f"not a value: {v!r}")


def format_stage(st: S.Stage) -> str:
    if isinstance(st, S.Repeat):
        return f"{format_value(st.stage)} * {st.count}"
    return format_value(st)


def _params(params) -> str:
    return ", ".join(params)


# --- comments ------------------------------------------------------------------


@dataclass
class _Comment:
    line: int  # 1-based source line
    column: int  # 1-based column of `#`
    text: str  # from `#` to the end of the line, trailing whitespace removed
    full_line: bool  # nothing but whitespace before it on its line


# A string or a comment: a `#` inside a string does not start a comment.
_LEX = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')


def _comments(source: str) -> list[_Comment]:
    starts = [0] + [i + 1 for i, ch in enumerate(source) if ch == "\n"]
    out = []
    for m in _LEX.finditer(source):
        if not m.group().startswith("#"):
            continue
        line = bisect.bisect_right(starts, m.start())
        col = m.start() - starts[line - 1] + 1
        before = source[starts[line - 1]: m.start()]
        out.append(_Comment(line, col, m.group().rstrip(), not before.strip()))
    return out


@dataclass(eq=False)
class _Unit:
    """A printable piece with its source lines: the file, an item, a statement,
    a setting or a pipe stage. Comments are attached to units."""

    node: object
    depth: int
    span: object = None  # fgc.errors.Span or None
    children: list = field(default_factory=list)
    braced: bool = False
    pipe_holder: bool = False  # children are the stages of one pipe
    leading: list = field(default_factory=list)  # full-line comments before it
    trailing: list = field(default_factory=list)  # at the end of its (last) line
    header: list = field(default_factory=list)  # after `{` (braced units)
    closing: list = field(default_factory=list)  # before `}` / at end of file

    @property
    def start(self):
        return (self.span.line, self.span.column) if self.span else None

    @property
    def end(self):
        return (self.span.end_line, self.span.end_column) if self.span else None

    def first_line(self) -> int | None:
        lines = [c.line for c in self.leading]
        if self.span:
            lines.append(self.span.line)
        return min(lines) if lines else None

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


def _units(spec: S.SpecFile) -> _Unit:
    root = _Unit(spec, 0)
    for it in spec.items:
        u = _Unit(it, 1, it.span)
        if isinstance(it, (S.BlockDef, S.NetworkDef)):
            u.braced = True
            for st in it.body:
                su = _Unit(st, 2, st.span, pipe_holder=True)
                su.children = [_Unit(x, 3, x.span) for x in st.pipe.stages]
                u.children.append(su)
        elif isinstance(it, S.Section):
            u.braced = True
            u.children = [_Unit(s, 2, s.span) for s in it.settings]
        elif isinstance(it, S.HeadDef):
            u.pipe_holder = True
            u.children = [_Unit(x, 2, x.span) for x in it.pipe.stages]
        root.children.append(u)
    return root


def _innermost(unit: _Unit, pos) -> _Unit:
    for c in unit.children:
        if c.span and c.start < pos < c.end:
            return _innermost(c, pos)
    return unit


def _attach(root: _Unit, comments: list[_Comment]) -> None:
    for c in comments:
        pos = (c.line, c.column)
        u = _innermost(root, pos)
        if c.full_line:
            nxt = next((ch for ch in u.children if ch.span and ch.start > pos), None)
            if nxt is not None:
                nxt.leading.append(c)
            elif u is root or u.braced:
                u.closing.append(c)
            else:
                u.leading.append(c)
            continue
        cands = [d for d in u.walk() if d is not u and d.span
                 and d.span.end_line == c.line and d.span.end_column <= c.column]
        if cands:
            max(cands, key=lambda d: (d.span.end_column, d.depth)).trailing.append(c)
        elif u is root:  # pragma: no cover - code before a comment belongs to an item
            u.closing.append(c)
        elif not u.children:
            u.trailing.append(c)
        else:
            before = [ch for ch in u.children if ch.span and ch.start < pos]
            if u.braced:
                (before[-1].trailing if before else u.header).append(c)
            else:
                (before[-1] if before else u.children[0]).trailing.append(c)


def _normalise(root: _Unit) -> None:
    """Leaves at most one end-of-line comment per printed position."""
    for u in root.walk():
        if u.pipe_holder and u.children and u.trailing:
            u.children[-1].trailing += u.trailing
            u.trailing = []
    for u in list(root.walk()):
        # A line holds one comment: the others of a position go before the unit.
        for attr in ("header", "trailing"):
            lst = getattr(u, attr)
            if len(lst) > 1:
                lst.sort(key=lambda c: (c.line, c.column))
                u.leading += lst[:-1]
                setattr(u, attr, lst[-1:])
        u.leading.sort(key=lambda c: (c.line, c.column))
    for u in root.walk():
        # Comments before the first stage of a pipe go before the statement.
        if u.pipe_holder and u.children and u.children[0].leading:
            u.leading += u.children[0].leading
            u.children[0].leading = []


# --- printing --------------------------------------------------------------------


def _gap(a: int | None, b: int | None) -> bool:
    """Whether source line ``b`` comes more than one line after ``a`` (a blank line)."""
    return a is not None and b is not None and b - a > 1


def _comment_block(comments: list[_Comment], indent: str, next_line: int | None) -> list[str]:
    out = []
    for i, c in enumerate(comments):
        if i and _gap(comments[i - 1].line, c.line):
            out.append("")
        out.append(indent + c.text)
    if comments and _gap(comments[-1].line, next_line):
        out.append("")
    return out


def _with_trailing(line: str, comments: list[_Comment]) -> str:
    return f"{line}  {comments[0].text}" if comments else line


def _pipe_lines(prefix: str, stages: list[_Unit]) -> list[str]:
    texts = [format_stage(s.node) for s in stages]
    forced = [i > 0 and bool(s.leading or stages[i - 1].trailing) for i, s in enumerate(stages)]
    one_line = prefix + " | ".join(texts)
    if not any(forced) and len(one_line) <= WIDTH:
        return [_with_trailing(one_line, stages[-1].trailing)]
    bar = " " * (len(prefix) + len(texts[0]) + 1)  # aligns continuation `|`s
    lines: list[str] = []
    cur = prefix + texts[0]
    for i in range(1, len(stages)):
        piece = " | " + texts[i]
        if forced[i] or len(cur) + len(piece) > WIDTH:
            lines.append(_with_trailing(cur, stages[i - 1].trailing))
            lines += [bar + c.text for c in stages[i].leading]
            cur = bar + "| " + texts[i]
        else:
            cur += piece
    lines.append(_with_trailing(cur, stages[-1].trailing))
    return lines


def _body_lines(u: _Unit, indent: str) -> list[str]:
    """The lines of a unit, without its leading comments."""
    node = u.node
    if isinstance(node, S.Assign):
        return _pipe_lines(f"{indent}{node.name} = ", u.children)
    if isinstance(node, S.Out):
        return _pipe_lines(f"{indent}out ", u.children)
    if isinstance(node, S.Setting):
        return [_with_trailing(f"{indent}{node.name} = {format_value(node.value)}", u.trailing)]
    if isinstance(node, S.HeadDef):
        params = f"({_params(node.params)})" if node.params else ""
        return _pipe_lines(f"{indent}head {node.name}{params} = ", u.children)
    if u.braced:
        if isinstance(node, S.BlockDef):
            head = f"block {node.name}({_params(node.params)}) {{"
        elif isinstance(node, S.NetworkDef):
            head = "network {"
        else:
            head = f"{node.kind} {node.name} {{" if node.name is not None else f"{node.kind} {{"
        if not (u.children or u.header or u.closing):
            return [_with_trailing(indent + head + "}", u.trailing)]
        out = [_with_trailing(indent + head, u.header)]
        out += _children_lines(u.children, indent + INDENT)
        if u.closing:
            last = u.children[-1].span.end_line if u.children and u.children[-1].span else None
            if _gap(last, u.closing[0].line) and u.children:
                out.append("")
            out += _comment_block(u.closing, indent + INDENT, None)
        out.append(_with_trailing(indent + "}", u.trailing))
        return out
    if isinstance(node, S.SpecDecl):
        text = f"spec {format_string(node.title)}"
    elif isinstance(node, S.InputDecl):
        text = f"input {node.name} = {format_value(node.kind)}" + _options(node.options)
    elif isinstance(node, S.ConstDecl):
        text = f"const {node.name} = {format_value(node.value)}"
    elif isinstance(node, S.LossDecl):
        text = (f"loss {node.name} = {format_value(node.head)} on {format_value(node.target)}"
                + _options(node.options))
    else:  # pragma: no cover
        raise TypeError(f"not an item: {node!r}")
    return [_with_trailing(indent + text, u.trailing)]


def _options(options) -> str:
    return "".join(f", {o.name} = {format_value(o.value)}" for o in options)


def _unit_lines(u: _Unit, indent: str) -> list[str]:
    start = u.span.line if u.span else None
    return _comment_block(u.leading, indent, start) + _body_lines(u, indent)


def _children_lines(children: list[_Unit], indent: str) -> list[str]:
    out: list[str] = []
    prev = None
    for ch in children:
        if prev is not None and prev.span and _gap(prev.span.end_line, ch.first_line()):
            out.append("")
        out += _unit_lines(ch, indent)
        prev = ch
    return out


def _blank_between(prev: _Unit, cur: _Unit, has_source: bool) -> bool:
    if type(prev.node) is type(cur.node) and isinstance(cur.node, _GROUPABLE):
        if not has_source or not prev.span:
            return False
        return _gap(prev.span.end_line, cur.first_line())
    return True


def format_spec(spec: S.SpecFile) -> str:
    """Prints ``spec`` in canonical form, keeping the comments of ``spec.source``."""
    root = _units(spec)
    has_source = bool(spec.source)
    if has_source:
        _attach(root, _comments(spec.source))
        _normalise(root)
    out: list[str] = []
    prev = None
    for u in root.children:
        if prev is not None and _blank_between(prev, u, has_source):
            out.append("")
        out += _unit_lines(u, "")
        prev = u
    if root.closing:
        last = prev.span.end_line if prev is not None and prev.span else None
        if prev is not None and _gap(last, root.closing[0].line):
            out.append("")
        out += _comment_block(root.closing, "", None)
    return "\n".join(out) + "\n" if out else ""
