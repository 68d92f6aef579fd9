"""Parsing .fg text into the typed syntax tree (the only module that imports lark)."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Transformer, v_args

from fgc.front import syntax as S
from fgc.errors import Diagnostic, FgError, Span, SpecError

MAX_SPEC_BYTES = 1_000_000  # a real spec is a few KB; larger input is a mistake
MAX_NESTING = 100  # deeper syntax trees (`[[[[...`, `1+1+...`) would overflow the stack
MAX_TERMS = 200  # terms of one flat sum or product (`1 + 1 + ...`)
_CHAIN = {"add": "+", "mul": "*", "div": "*"}
MAX_NUMBER_CHARS = 100  # longer literals are typos (and Python cannot print > 4300 digits)


class _LongNumber(Exception):
    def __init__(self, tok):
        self.tok = tok


def _check_length(tok) -> str:
    if len(tok) > MAX_NUMBER_CHARS:
        raise _LongNumber(tok)
    return str(tok)

# Friendly names for the grammar's terminals, used in "expected ..." messages.
_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "STRING": "a string",
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`",
    "RSQB": "`]`", "COMMA": "`,`", "EQUAL": "`=`", "VBAR": "`|`", "STAR": "`*`",
    "SLASH": "`/`", "PLUS": "`+`", "COLON": "`:`", "SECTION": "`algorithm`, `train` or `group`",
    "TRUE": "`true`", "FALSE": "`false`", "$END": "end of file",
}


def _grammar_text() -> str:
    # In a source checkout the grammar sits at the top level; in a wheel it is
    # installed as the fgc.grammar package data.
    local = Path(__file__).resolve().parents[2] / "grammar" / "fg.lark"
    if local.is_file():
        return local.read_text(encoding="utf-8")
    return resources.files("fgc.grammar").joinpath("fg.lark").read_text(encoding="utf-8")


@functools.cache
def _parser() -> Lark:
    return Lark(_grammar_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True)


def _span_of(path: str, meta) -> Span | None:
    if getattr(meta, "empty", True):
        return None
    return Span(path, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(path: str, tok: Token) -> Span:
    return Span(path, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(tok))


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds syntax nodes; never raises semantic errors (those belong to fgc.graph.check)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _s(self, meta):
        return _span_of(self.path, meta)

    # values
    def number(self, meta, c):
        (tok,) = c
        text = _check_length(tok)
        is_int = not any(ch in text for ch in ".eE")
        return S.Number(int(text) if is_int else float(text), self._s(meta))

    def string(self, meta, c):
        raw = str(c[0])[1:-1]
        return S.String(raw.replace('\\"', '"').replace("\\\\", "\\"), self._s(meta))

    def true(self, meta, c):
        return S.Bool(True, self._s(meta))

    def false(self, meta, c):
        return S.Bool(False, self._s(meta))

    def name(self, meta, c):
        return S.Name(str(c[0]), self._s(meta))

    def list(self, meta, c):
        return S.List(tuple(x for x in c if x is not None), self._s(meta))

    def _binop(op):
        def f(self, meta, c):
            return S.BinOp(op, c[0], c[1], self._s(meta))
        return f

    add = _binop("+")
    mul = _binop("*")
    div = _binop("/")

    def index_one(self, meta, c):
        return S.Index(str(c[0]), c[1], None, False, self._s(meta))

    def index_range(self, meta, c):
        return S.Index(str(c[0]), c[1], c[2], True, self._s(meta))

    def kwarg(self, meta, c):
        return S.Kwarg(str(c[0]), c[1], self._s(meta))

    def call(self, meta, c):
        func, *rest = c
        rest = [x for x in rest if x is not None]
        args = tuple(x for x in rest if not isinstance(x, S.Kwarg))
        kwargs = tuple(x for x in rest if isinstance(x, S.Kwarg))
        return S.Call(str(func), args, kwargs, self._s(meta))

    # dataflow
    def repeat(self, meta, c):
        return S.Repeat(c[0], int(_check_length(c[1])), self._s(meta))

    def pipe(self, meta, c):
        return S.Pipe(tuple(c), self._s(meta))

    def assign(self, meta, c):
        return S.Assign(str(c[0]), c[1], self._s(meta))

    def out_stmt(self, meta, c):
        return S.Out(c[0], self._s(meta))

    def names(self, meta, c):
        return tuple(str(t) for t in c)

    def option(self, meta, c):
        return S.Option(str(c[0]), c[1], self._s(meta))

    def setting(self, meta, c):
        return S.Setting(str(c[0]), c[1], self._s(meta))

    # items
    def spec_decl(self, meta, c):
        return S.SpecDecl(self.string(meta, c).value, self._s(meta))

    def input_decl(self, meta, c):
        return S.InputDecl(str(c[0]), c[1], tuple(c[2:]), self._s(meta))

    def const_decl(self, meta, c):
        return S.ConstDecl(str(c[0]), c[1], self._s(meta))

    def block_def(self, meta, c):
        name, params, *body = c
        return S.BlockDef(str(name), params or (), tuple(body), self._s(meta))

    def head_def(self, meta, c):
        name, params, pipe = c
        return S.HeadDef(str(name), params or (), pipe, self._s(meta))

    def network_def(self, meta, c):
        return S.NetworkDef(tuple(c), self._s(meta))

    def loss_decl(self, meta, c):
        name, head, target, *opts = c
        return S.LossDecl(str(name), head, target, tuple(opts), self._s(meta))

    def section(self, meta, c):
        kind, name, *settings = c
        return S.Section(str(kind), None if name is None else str(name), tuple(settings),
                         self._s(meta))

    def start(self, meta, c):
        return tuple(c)


def _expected(exc) -> str:
    names = sorted({_TOKEN_NAMES.get(t, f"`{t.lower()}`") for t in getattr(exc, "expected", ())
                    if not t.startswith("_") and t not in ("COMMENT",)})
    if not names:
        return ""
    if len(names) > 6:
        names = names[:6] + ["..."]
    return "expected " + ", ".join(names)


def _syntax_error(exc: lark.exceptions.LarkError, path: str, text: str) -> SpecError:
    line = getattr(exc, "line", None) or 1
    col = getattr(exc, "column", None) or 1
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            if tok.end_line:  # lark places $END at the last token: point just after it
                line, col = tok.end_line, tok.end_column
            else:
                lines = text.split("\n")
                line, col = len(lines), len(lines[-1]) + 1
            msg, code = "unexpected end of file", "E001"
        else:
            msg, code = f"unexpected {_describe(tok)}", "E002"
        hint = _expected(exc) or None
        if hint:
            hint = hint[0].upper() + hint[1:]
    elif isinstance(exc, lark.exceptions.UnexpectedCharacters):
        ch = exc.char if getattr(exc, "char", None) else "?"
        msg, code = f"unexpected character {ch!r}", "E003"
        hint = "names are letters, digits, `_` and `-`; strings use double quotes"
        if ch == '"':
            msg, hint = "unterminated string", 'close it with `"` on the same line'
        elif ch == "'":
            hint = 'strings use double quotes: "..."'
    else:  # pragma: no cover - lark raises only the two above for LALR
        msg, code, hint = str(exc), "E002", None
    span = Span(path, line, col, line, col + 1)
    return SpecError([Diagnostic(code, msg, span, hint)], text)


def _describe(tok: Token) -> str:
    if tok.type in ("NAME", "NUMBER", "INT", "STRING"):
        return f"{_TOKEN_NAMES[tok.type][2:] if tok.type != 'INT' else 'integer'} `{tok}`"
    return f"`{tok}`"


def decode(data: bytes, path: str) -> str:
    """Turns raw file bytes into spec text, or raises a one-line :class:`SpecError`."""
    def fail(code, msg, hint):
        raise SpecError([Diagnostic(code, msg, Span(path, 1, 1, 1, 2), hint)])

    if len(data) > MAX_SPEC_BYTES:
        fail("E005", f"file is over {MAX_SPEC_BYTES:,} bytes; a spec must be under "
             f"{MAX_SPEC_BYTES:,}",
             "is this really a .fg spec?")
    if b"\x00" in data:
        fail("E006", "file is binary, not a .fg spec", "pass a text file written in the .fg language")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        # the column counts characters; what precedes the bad byte is valid UTF-8
        col = len(data[data.rfind(b"\n", 0, e.start) + 1: e.start].decode("utf-8")) + 1
        raise SpecError([Diagnostic("E007", f"invalid UTF-8 byte 0x{data[e.start]:02x}",
                                    Span(path, line, col, line, col + 1),
                                    "save the spec as UTF-8")],
                        data.decode("utf-8", "replace")) from None
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        fail("E004", "spec is empty", "a spec needs at least an `input` and a `network { ... }`")
    return text.removeprefix("\ufeff")


def parse(text: str, path: str = "<spec>") -> S.SpecFile:
    """Parses spec text into a :class:`~fgc.front.syntax.SpecFile`.

    Raises:
      SpecError: with ``path:line:col`` of the first syntax error.
    """
    if not text.strip() or all(not l.strip() or l.strip().startswith("#")
                               for l in text.splitlines()):
        decode(text.encode("utf-8", "replace"), path)  # raises the empty-spec error
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(exc, path, text) from None
    except lark.exceptions.LarkError as exc:  # pragma: no cover - defensive
        raise SpecError([Diagnostic("E002", str(exc).splitlines()[0], Span(path, 1, 1, 1, 2))],
                        text) from None
    deep = _too_deep(tree)
    if deep is not None:
        m = deep.meta
        line, col = (1, 1) if getattr(m, "empty", True) else (m.line, m.column)
        what = (f"a {'sum' if deep.data == 'add' else 'product'} of more than {MAX_TERMS} terms"
                if deep.data in _CHAIN else f"expression nested more than {MAX_NESTING} levels deep")
        raise SpecError([Diagnostic("E002", what, Span(path, line, col, line, col + 1),
                                    "split it up with `const` definitions")], text)
    try:
        items = _ToAst(path).transform(tree)
    except lark.exceptions.VisitError as e:
        if not isinstance(e.orig_exc, _LongNumber):
            raise
        tok = e.orig_exc.tok
        raise SpecError([Diagnostic("E002", f"a number of {len(tok):,} characters",
                                    _tok_span(path, tok),
                                    f"numbers have at most {MAX_NUMBER_CHARS} characters")],
                        text) from None
    return S.SpecFile(items, path, text)


def _too_deep(tree: lark.Tree) -> lark.Tree | None:
    """The first subtree nested deeper than MAX_NESTING, found without recursion."""
    stack = [(tree, 1, 1)]
    while stack:
        t, depth, terms = stack.pop()
        if depth > MAX_NESTING or terms > MAX_TERMS:
            return t
        for c in t.children:
            if isinstance(c, lark.Tree):
                flat = _CHAIN.get(c.data) is not None and _CHAIN.get(c.data) == _CHAIN.get(t.data)
                # the next term of a flat sum or product is not one level deeper
                stack.append((c, depth, terms + 1) if flat else (c, depth + 1, 2 if c.data in _CHAIN else 1))
    return None


def parse_file(path: str | Path) -> S.SpecFile:
    """Reads and parses a spec file; every failure is a :class:`FgError`."""
    p = Path(path)
    try:
        with open(p, "rb") as f:  # /dev/zero or a huge file: read no more than the limit
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise FgError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise FgError(f"{p}: is a directory, not a .fg spec") from None
    except OSError as e:
        raise FgError(f"{p}: cannot read: {e.strerror}") from None
    return parse(decode(data, str(p)), str(p))
