"""Errors fgc reports to users.

Every problem a user can cause (a malformed spec, a missing dataset, a corrupt
checkpoint, NaN in training) is raised as a subclass of :class:`FgError`; the CLI
prints these as messages, never as tracebacks. Anything else escaping is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun in the right number: ``plural(1, "group")`` is ``1 group``,
    ``plural(3, "patch", "patches")`` is ``3 patches``."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column of its start and end."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec, with a stable code (see docs/language.md)."""

    code: str
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: str = "error"

    def render(self, source: str | None = None) -> str:
        """Formats as ``path:line:col: error[CODE]: message`` plus source line and caret."""
        where = f"{self.span}: " if self.span else ""
        out = [f"{where}{self.severity}[{self.code}]: {self.message}"]
        if self.span and source is not None:
            lines = source.splitlines()
            if 1 <= self.span.line <= len(lines):
                text = lines[self.span.line - 1].expandtabs(1)
                width = 1
                if self.span.end_line == self.span.line:
                    width = max(1, self.span.end_column - self.span.column)
                text, col, width = _window(text, self.span.column - 1, width)
                out.append(f"  {self.span.line:>4} | {text}")
                out.append("       | " + " " * col + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


SHOWN = 100  # characters of a source line shown under a message


def _window(text: str, col: int, width: int) -> tuple[str, int, int]:
    """At most :data:`SHOWN` characters of ``text`` around ``col`` (0-based), with ``…``
    where it was cut, and the caret's column and width within them."""
    if len(text) <= SHOWN:
        return text, col, width
    start = 0 if col < SHOWN // 2 else max(0, min(col - SHOWN // 4, len(text) - SHOWN))
    end = start + SHOWN
    shown = ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
    col = col - start + (1 if start else 0)
    return shown, col, max(1, min(width, end - start - (col - (1 if start else 0))))


class FgError(Exception):
    """Base of every error fgc reports to a user."""


class SpecError(FgError):
    """A spec has one or more problems; carries all of them."""

    def __init__(self, diagnostics: list[Diagnostic], source: str | None = None):
        # one misspelt op in a head that three blocks use is one mistake, not three
        self.diagnostics = list(dict.fromkeys(diagnostics))
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        body = "\n".join(d.render(self.source) for d in self.diagnostics)
        n = len(self.diagnostics)
        return body + (f"\n{n} errors" if n > 1 else "")

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]


class DataError(FgError):
    """A dataset is missing, corrupt or of the wrong shape."""


class CheckpointError(FgError):
    """A checkpoint is missing, corrupt or does not match the spec."""


class TrainingError(FgError):
    """Training cannot go on (a loss became NaN or Inf, ...)."""


class LoweringError(FgError, NotImplementedError):
    """A checked spec uses an op or loss kind that has no lowering to JAX yet.

    It is also a :class:`NotImplementedError`, so code written against the
    earlier ``NotImplementedError`` keeps catching it.
    """
