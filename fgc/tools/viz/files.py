"""Writing a drawing to a file: DOT text as it is, images through Graphviz's ``dot``, the
interactive page (``.html``) by :mod:`fgc.tools.viz.page`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fgc.errors import FgError
from fgc.tools.viz.dot import to_dot

FORMATS = {".dot": None, ".gv": None, ".svg": "svg", ".png": "png", ".pdf": "pdf", ".html": "html"}

def render(plan, path: Path) -> None:
    """Writes the plan's picture to ``path``: ``.dot``/``.gv`` as text, ``.svg``/``.png``/
    ``.pdf`` through Graphviz's ``dot``, ``.html`` as the interactive page of this one
    algorithm (:func:`fgc.tools.viz.page.write_page` draws every algorithm of a program).
    The file appears whole or not at all."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise FgError(f"cannot draw to `{path}`: unknown extension `{path.suffix or '(none)'}`; "
                      f"use one of {', '.join(FORMATS)}")
    fmt = FORMATS[ext]
    if fmt == "html":
        from fgc.tools.viz.page import page_html, plan_view
        view = plan_view(plan)
        name = plan.algorithm.name
        data = {"title": plan.graph.meta.get("title") or plan.graph.meta.get("path") or "spec",
                "order": [name], "selected": name, "views": {name: view},
                "graphviz": view.get("drawing") == "graphviz"}
        atomic_write(path, page_html(data).encode("utf-8"))
        return
    text = to_dot(plan)
    if fmt is None:
        atomic_write(path, text.encode("utf-8"))
        return
    atomic_write(path, run_dot(text, fmt, path))


def have_dot() -> bool:
    """Whether Graphviz's ``dot`` is on PATH."""
    return shutil.which("dot") is not None


def run_dot(text: str, fmt: str, path: Path) -> bytes:
    """DOT text drawn by Graphviz as ``fmt`` (``svg``, ``png`` ...); ``path`` names the
    file being drawn, for messages."""
    exe = shutil.which("dot")
    if exe is None:
        raise FgError(
            f"drawing `{path.name}` needs Graphviz's `dot` program, which is not on PATH. "
            "Install it with `apt-get install graphviz` (Debian/Ubuntu), "
            "`brew install graphviz` (macOS) or `conda install graphviz`, "
            f"or write DOT text without it: `-o {path.with_suffix('.dot').name}` "
            f"(or the page, drawn by fgc itself: `-o {path.with_suffix('.html').name}`)")
    try:
        res = subprocess.run([exe, f"-T{fmt}"], input=text.encode("utf-8"),
                             capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FgError(f"Graphviz `dot` failed to draw `{path}`: {e}") from None
    if res.returncode != 0 or not res.stdout:
        err = res.stderr.decode("utf-8", "replace").strip()
        raise FgError(f"Graphviz `dot` failed to draw `{path}` (exit {res.returncode})"
                      + (f": {err}" if err else ""))
    return res.stdout


def atomic_write(path: Path, data: bytes) -> None:
    """Writes through a temporary file next to ``path`` and renames it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise FgError(f"cannot write `{path}`: {e.strerror or e}") from None
        raise
