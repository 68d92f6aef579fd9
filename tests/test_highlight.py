"""Highlighting: the Pygments lexer `fg` and the TextMate grammar in editors/ know the
grammar's keywords and the op table's ops, and colour every shipped spec without an error."""

import json
import re
import sys
from pathlib import Path

import pytest

from fgc.graph.ops import OPS

pygments = pytest.importorskip("pygments", reason="pygments is not installed (pip install "
                               "-e '.[highlight]')")
from pygments.token import Error, Keyword, Name  # noqa: E402

from fgc.front.highlight import KEYWORDS, FgLexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "specs").glob("*.fg")) + [ROOT / "grammar" / "algorithms.fg"]
TEXTMATE = ROOT / "editors" / "fg.tmLanguage.json"


def grammar_keywords() -> set[str]:
    """Every quoted word of grammar/fg.lark, and the words of its keyword terminals
    (written as regexes that end at a word boundary): the language's keywords."""
    text = (ROOT / "grammar" / "fg.lark").read_text(encoding="utf-8")
    words = set(re.findall(r'"([a-z]+)"', text))
    for alts in re.findall(r"/\(?([a-z|]+)\)?\(\?!", text):
        words |= set(alts.split("|"))
    return words


def test_keywords_are_the_grammars():
    assert set(KEYWORDS) == grammar_keywords()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_spec_tokenises_without_an_error(path):
    text = path.read_text(encoding="utf-8")
    tokens = list(FgLexer().get_tokens(text))
    bad = [v for t, v in tokens if t in Error]
    assert not bad, bad
    assert "".join(v for _, v in tokens) == (text if text.endswith("\n") else text + "\n")


def test_tokens():
    toks = [(t, v) for t, v in FgLexer().get_tokens(
        'block mixer(w) { out in | dense(w) | perturb }  # c\nalgorithm lg-fg-a { greedy = true }\n'
        'train { algorithm = lg-fg-a, x = on_blocks }\n') if v.strip()]
    kinds = dict((v, t) for t, v in toks)
    assert kinds["block"] in Keyword.Declaration and kinds["out"] in Keyword
    assert kinds["dense"] is Name.Builtin and kinds["perturb"] is Name.Builtin
    assert kinds["lg-fg-a"] is Name and kinds["on_blocks"] is Name  # whole names, not keywords
    assert kinds["true"] is Keyword.Constant


def test_entry_point_names_the_lexer():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = meta["project"]["entry-points"]["pygments.lexers"]["fg"]
    module, _, cls = target.partition(":")
    assert getattr(__import__(module, fromlist=[cls]), cls) is FgLexer
    assert "pygments>=2.15" in meta["project"]["optional-dependencies"]["test"]
    # once installed, Pygments finds it by name (an editable install of another checkout
    # may register it from there: compare by name)
    from pygments.lexers import find_lexer_class_by_name
    from pygments.util import ClassNotFound
    try:
        found = find_lexer_class_by_name("fg")
    except ClassNotFound:
        pytest.skip("fgc is not installed with this entry point (pip install -e .)")
    assert found.__name__ == "FgLexer"


def textmate():
    return json.loads(TEXTMATE.read_text(encoding="utf-8"))


def _words(pattern: str) -> set[str]:
    return set(re.search(r"\\b\(([^)]*)\)", pattern).group(1).split("|"))


def test_textmate_grammar_knows_the_keywords_and_ops():
    g = textmate()
    assert g["scopeName"] == "source.fg" and g["fileTypes"] == ["fg"]
    keywords = set()
    for p in g["repository"]["keyword"]["patterns"]:
        keywords |= _words(p["match"])
    assert keywords == grammar_keywords()
    assert _words(g["repository"]["builtin"]["patterns"][0]["match"]) == set(OPS)


def _textmate_rules(g):
    for inc in g["patterns"]:
        rule = g["repository"][inc["include"][1:]]
        for r in rule.get("patterns", [rule]):
            yield r["name"], re.compile(r["match"], re.M)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_textmate_grammar_covers_every_spec(path):
    """Scanning with the grammar's rules in order (as an editor does) leaves nothing but
    whitespace unmatched."""
    rules = list(_textmate_rules(textmate()))
    text = path.read_text(encoding="utf-8")
    i, names = 0, set()
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        for name, rx in rules:
            m = rx.match(text, i)
            if m and m.end() > i:
                names.add(name)
                i = m.end()
                break
        else:
            raise AssertionError(f"{path.name}: nothing matches {text[i:i + 20]!r}")
    assert "storage.type.declaration.fg" in names and "comment.line.number-sign.fg" in names
