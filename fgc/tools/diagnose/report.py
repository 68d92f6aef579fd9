"""`fgc diagnose`'s output: the result as JSON with its figures, and as a plain-text table."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fgc.tools.common import write_whole
from fgc.tools.diagnose.base import (KINDS, PLOTS, RESULT, _LABEL, _SHORT, DiagnoseError,
                                     _block_label, _kinds, _subtitle, _target_words)
from fgc.tools.diagnose.figures import _draw_cosine, _draw_ratio, _draw_variance


def save(result: dict, out: str | os.PathLike) -> list[Path]:
    """Writes ``diagnose.json`` and the three figures into ``out`` (created if missing).

    Figures (PNG, matplotlib's object-oriented API only, as :mod:`fgc.tools.plot`):
    ``cosine.png`` (cosine vs K per block, weight and activity perturbation),
    ``variance.png`` (normalised variance vs K, log-log, with a 1/K guide) and
    ``variance_ratio.png`` (weight/activity variance ratio vs fan-in against Table 1).

    Returns:
      The files written.
    """
    path = write_result(result, out)
    out = path.parent
    written = [path]
    import matplotlib

    from fgc.tools.plot import _RC, _save
    with matplotlib.rc_context(_RC):
        for key, draw in (("cosine", _draw_cosine), ("variance", _draw_variance),
                          ("ratio", _draw_ratio)):
            fig = draw(result)
            if fig is not None:
                _save(fig, out / PLOTS[key], "png")
                written.append(out / PLOTS[key])
    return written



def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-2):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def format_table(r: dict) -> str:
    """A compact plain-text summary of a :func:`diagnose` result."""
    ks = r["tangents"]
    kinds = _kinds(r)
    lines = [_subtitle(r) + f" · {r['device']}",
             f"target: {_target_words(r)}; end-to-end: "
             + ("BP gradient" if r["end_to_end"]["available"] else
                r["end_to_end"]["note"] or "unavailable")
             + f"; warm-up: {_warmup_words(r)}"]
    for kind in KINDS:
        if kind not in kinds:
            lines.append(f"{_LABEL[kind]}: not run ({r['estimators'][kind]['reason']})")
    rows = r["blocks"] + [r["all"]]
    name_w = max(len(_block_label(u)) for u in rows) + 2
    sep = "/".join(_SHORT[k] for k in kinds)
    for field, words in (("cos_target", "cosine with the target gradient"),
                         ("cos_e2e", "cosine with the end-to-end gradient"),
                         ("variance", "normalised variance Σ Var / ‖g‖²")):
        if field == "cos_e2e" and not r["end_to_end"]["available"]:
            continue
        table = [[" / ".join(_fmt(u[k][field][i], 3) for k in kinds) for i in range(len(ks))]
                 for u in rows]
        cell = 2 + max(len(c) for row in table for c in row)
        lines += ["", f"{words} ({sep})",
                  " " * name_w + "".join(f"{'K=' + str(k):>{cell}}" for k in ks)]
        for u, row in zip(rows, table):
            lines.append(f"{_block_label(u):<{name_w}}" + "".join(f"{c:>{cell}}" for c in row))
    layers = r["layers"]
    if layers and all(k in kinds for k in KINDS):
        w = max(len(l["layer"]) for l in layers) + 2
        lines += ["", "variance ratio weight/activity per layer (K·variance pooled over K) vs "
                  "REFERENCE Table 1",
                  f"{'layer':<{w}}{'fan-in':>8}{'fan-out':>9}{'measured':>11}{'Table 1':>11}"
                  f"{'coherence':>11}"]
        for l in layers:
            lines.append(f"{l['layer']:<{w}}{l['fan_in']:>8}{l['fan_out']:>9}"
                         f"{_fmt(l['ratio_measured'], 1):>11}{_fmt(l['ratio_predicted'], 1):>11}"
                         f"{_fmt(l['coherence'], 3):>11}")
        note = (r.get("table1_prediction") or {}).get("note")
        if note:
            lines.append(f"Table 1 column: {note}")
    return "\n".join(lines)


def write_result(result: dict, out: str | os.PathLike) -> Path:
    """Writes ``result`` as ``out/diagnose.json`` (``out`` created if missing), whole or not
    at all; a clear error when ``out`` is a file or cannot be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiagnoseError(f"cannot write into `{out}`: it is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiagnoseError(f"cannot create `{out}`: {e.strerror or e}") from None
    path = out / RESULT
    write_whole(path, json.dumps(result, indent=1, allow_nan=False) + "\n", DiagnoseError)
    return path


def _warmup_words(r: dict) -> str:
    """``20 steps``, with the warm-up algorithm where it is not the measured one."""
    words = f"{r['warmup_steps']} steps"
    warm = r.get("warmup_algorithm")
    return words + (f" of {warm}" if warm and warm != r["algorithm"] else "")
