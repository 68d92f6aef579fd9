"""Syntax highlighting of ``.fg`` specs: a Pygments lexer, registered under the name ``fg``
(the ``pygments.lexers`` entry point), so ``pygmentize -l fg``, Sphinx/MkDocs code blocks
marked ```` ```fg ```` and anything else that uses Pygments colour specs.

Its words are the grammar's (``grammar/fg.lark``: every quoted keyword) and the op table's
(:data:`fgc.graph.ops.OPS`), checked by tests; ``editors/fg.tmLanguage.json`` is the same for
editors that read TextMate grammars (VS Code, Sublime Text, Zed, GitHub's Linguist).
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, words
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String,
                            Whitespace)

# The grammar's keywords: declarations and section kinds, the words inside statements,
# and the two constants.
DECLARATIONS = ("spec", "input", "const", "block", "head", "network", "loss",
                "algorithm", "train", "group")
STATEMENTS = ("out", "on")
CONSTANTS = ("true", "false")
KEYWORDS = DECLARATIONS + STATEMENTS + CONSTANTS
# A keyword or op is a whole name: not the start of `on_blocks` or `lg-fg-a`.
_END = r"(?![\w-])"


def _ops() -> tuple[str, ...]:
    from fgc.graph.ops import OPS  # plain data: no JAX
    return tuple(sorted(OPS))


class FgLexer(RegexLexer):
    """Pygments lexer for fgc's ``.fg`` spec language."""

    name = "fg"
    aliases = ["fg", "fgc"]
    filenames = ["*.fg"]
    mimetypes = ["text/x-fg"]

    tokens = {
        "root": [
            (r"\s+", Whitespace),
            (r"#[^\n]*", Comment.Single),
            (r'"([^"\\\n]|\\.)*"', String.Double),
            (words(DECLARATIONS, suffix=_END), Keyword.Declaration),
            (words(STATEMENTS, suffix=_END), Keyword),
            (words(CONSTANTS, suffix=_END), Keyword.Constant),
            (words(_ops(), suffix=_END), Name.Builtin),
            (r"\bin" + _END, Name.Builtin.Pseudo),  # a block's input
            (r"[A-Za-z_][A-Za-z0-9_]*(-[A-Za-z0-9_]+)*", Name),
            (r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", Number),
            (r"[|*/+=]", Operator),
            (r"[(){}\[\],:]", Punctuation),  # `:` of a range of block instances
        ],
    }
