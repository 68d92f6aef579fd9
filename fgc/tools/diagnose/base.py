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
