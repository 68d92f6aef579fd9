"""What every part of `fgc diagnose` shares: its error, defaults, file names and the words
tables and figures use for a result."""

from __future__ import annotations

from pathlib import Path

from fgc.errors import FgError

DEFAULT_TANGENTS = (1, 4, 16, 64)
DEFAULT_BATCHES = 4
DEFAULT_DRAWS = 32
DEFAULT_WARMUP = 20
KINDS = ("activity", "weights")  # perturbation kinds, in the order tables show them
RESULT = "diagnose.json"
PLOTS = {"cosine": "cosine.png", "variance": "variance.png", "ratio": "variance_ratio.png"}
_LABEL = {"activity": "activity perturbation", "weights": "weight perturbation"}
_SHORT = {"activity": "act", "weights": "wt"}


class DiagnoseError(FgError):
    """`fgc diagnose` cannot run as asked (bad settings, a backprop algorithm, ...)."""


def _subtitle(r: dict) -> str:
    what = r.get("title") or Path(r["spec"]).stem
    return (f"{what} · {r['algorithm']} · {r['dataset']}, batch {r['batch_size']} · "
            f"{r['batches']} batch{'es' if r['batches'] != 1 else ''} × {r['draws']} draws")


def _kinds(r) -> list[str]:
    return [k for k in KINDS if r["estimators"][k]["available"]]


def _block_label(u: dict) -> str:
    groups = {"backbone"}
    return u["block"] if u["group"] in groups or u["group"] is None else \
        f"{u['block']} ({u['group']})"


def _target_words(r: dict) -> str:
    if r["target"] == "global":
        return "the final-loss gradient" + ("" if r["greedy"] else " (= end to end)")
    return "its local-loss gradient" + (" (greedy)" if r["greedy"] else "")


def finite_draws(d, what: str):
    """``d`` (the draws' dot products) as float64, or DiagnoseError when an estimate came
    out NaN or infinite: every statistic of it would be silently empty (``null``)."""
    import numpy as np
    d = np.asarray(d, np.float64)
    bad = ~np.isfinite(d).reshape(d.shape[0], -1).all(axis=1)
    if bad.any():
        raise DiagnoseError(
            f"{int(bad.sum())} of {d.shape[0]} draws of {what} came out NaN or infinite, so "
            "no statistic of them means anything; check that the algorithm trains at this "
            "batch size (fgc train --steps 20), and report it if it does: a step that is "
            "finite alone and not here is a bug")
    return d
