"""`fgc diagnose`'s figures: cosine and variance against the tangent count, and the
variance ratio of weight to activity perturbation against REFERENCE Table 1. Matplotlib's
object-oriented API only, as :mod:`fgc.tools.plot`."""

from __future__ import annotations

import math

import numpy as np

from fgc.tools.diagnose.base import _LABEL, _block_label, _kinds, _subtitle, _target_words


# Okabe & Ito, as fgc.tools.plot (black last: it is the reference lines' colour).
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F",
            "#8C564B", "#BCBD22", "#17BECF")
_STYLE = {"activity": ("-", "o"), "weights": ("--", "s")}
_KIND_MARKERS = {"dense": "o", "group_linear": "s", "token_mix": "^", "conv": "D"}


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _log2_axis(ax, ks) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(k) for k in ks])
    lo, hi = min(ks), max(ks)
    ax.set_xlim(lo / 1.3, hi * 1.3)


def _block_handles(r):
    from matplotlib.lines import Line2D
    hs = [Line2D([], [], color=_COLOURS[i % len(_COLOURS)], lw=2.2, label=_block_label(u))
          for i, u in enumerate(r["blocks"])]
    hs += [Line2D([], [], color="0.15", ls=_STYLE[k][0], marker=_STYLE[k][1], label=_LABEL[k])
           for k in _kinds(r)]
    return hs


def _draw_cosine(r: dict):
    ks = r["tangents"]
    panels = [("cos_target", _target_words(r))]
    if r["end_to_end"]["available"] and not (r["target"] == "global" and not r["greedy"]):
        panels.append(("cos_e2e", "the end-to-end (BP) gradient"))
    fig, axes = _figure(5.2 * len(panels) + 0.6, 4.3, len(panels))
    for ax, (field, words) in zip(axes, panels):
        for i, u in enumerate(r["blocks"]):
            for kind in _kinds(r):
                ys = u[kind][field]
                pts = [(k, y) for k, y in zip(ks, ys) if y is not None]
                if not pts:
                    continue
                ls, mk = _STYLE[kind]
                ax.plot(*zip(*pts), color=_COLOURS[i % len(_COLOURS)], ls=ls, marker=mk)
        ax.axhline(0.0, color="0.4", lw=0.8, zorder=0)
        _log2_axis(ax, ks)
        ax.set(xlabel="Tangents per estimate K (log₂)", ylabel="Cosine similarity",
               title=f"Estimate vs {words}")
        top = max([y for u in r["blocks"] for k in _kinds(r) for y in u[k][field]
                   if y is not None] + [0.05])
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), min(1.02, max(top * 1.12, top + 0.03)))
    fig.suptitle(f"Cosine similarity of the forward-gradient estimate\n{_subtitle(r)}",
                 fontsize=11)
    fig.legend(handles=_block_handles(r), loc="outside lower center",
               ncols=min(6, len(r["blocks"]) + len(_kinds(r))), frameon=False, handlelength=2.6)
    return fig


def _draw_variance(r: dict):
    ks = r["tangents"]
    fig, (ax,) = _figure(6.4, 4.6)
    from matplotlib.lines import Line2D
    for i, u in enumerate(r["blocks"]):
        for kind in _kinds(r):
            pts = [(k, y) for k, y in zip(ks, u[kind]["variance"]) if y is not None and y > 0]
            if pts:
                ls, mk = _STYLE[kind]
                ax.plot(*zip(*pts), color=_COLOURS[i % len(_COLOURS)], ls=ls, marker=mk)
    guides = []
    for kind in _kinds(r):
        firsts = [u[kind]["variance"][0] for u in r["blocks"]
                  if u[kind]["variance"][0] is not None and u[kind]["variance"][0] > 0]
        if firsts:
            v1 = math.exp(np.mean(np.log(firsts))) * ks[0]
            xs = np.array([ks[0], ks[-1]], np.float64)
            ax.plot(xs, v1 / xs, color="0.55", ls=":", lw=1.4, zorder=0)
            guides.append(kind)
    _log2_axis(ax, ks)
    ax.set_yscale("log")
    ax.set(xlabel="Tangents per estimate K (log₂)",
           ylabel="Normalised variance  Σᵢ Var[ĝᵢ] / ‖g‖²",
           title="Variance of the estimate falls like 1/K")
    handles = _block_handles(r)
    if guides:
        handles.append(Line2D([], [], color="0.55", ls=":", lw=1.4,
                              label="∝ 1/K guide"))
    fig.suptitle(_subtitle(r), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False,
               handlelength=2.6)
    return fig


def _draw_ratio(r: dict):
    from matplotlib.lines import Line2D
    layers = [l for l in r["layers"] if l["ratio_measured"] is not None]
    if not layers:
        return None
    fig, (ax,) = _figure(6.6, 5.0)
    blocks = [u["block"] for u in r["blocks"]]
    colour = {b: _COLOURS[i % len(_COLOURS)] for i, b in enumerate(blocks)}
    n = r["batch_size"]
    ps = [l["fan_in"] for l in layers]
    for l in layers:
        c = colour.get(l["block"], "0.3")
        mk = _KIND_MARKERS.get(l["kind"], "P")
        x = l["fan_in"] * _jitter(l, layers)
        ax.plot([x], [l["ratio_measured"]], ls="none", marker=mk, color=c, ms=7.5,
                markeredgecolor="white", markeredgewidth=0.6, zorder=3)
        if l["ratio_predicted"] is not None:
            ax.plot([x], [l["ratio_predicted"]], ls="none", marker=mk, ms=7.5,
                    markerfacecolor="none", markeredgecolor=c, markeredgewidth=1.3, zorder=3)
            ax.plot([x, x], [l["ratio_measured"], l["ratio_predicted"]], color=c, lw=0.8,
                    alpha=0.6, zorder=2)
    lo, hi = min(ps) / 1.6, max(ps) * 1.6
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, color="0.35", ls="--", lw=1.1, zorder=1)
    ax.plot(xs, xs * n, color="0.35", ls=":", lw=1.3, zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set(xlabel="Fan-in p of the layer (per group for group-linear)",
           ylabel="Variance ratio  weight / activity perturbation",
           title="Weight vs activity perturbation against REFERENCE §6 Table 1")
    handles = [Line2D([], [], color=colour[b], lw=0, marker="o", ms=7, label=b) for b in blocks
               if any(l["block"] == b for l in layers)]
    kinds = sorted({l["kind"] for l in layers})
    handles += [Line2D([], [], color="0.25", lw=0, marker=_KIND_MARKERS.get(k, "P"), ms=7,
                       label=k.replace("_", "-")) for k in kinds]
    handles += [
        Line2D([], [], color="0.25", lw=0, marker="o", ms=7, label="measured (filled)"),
        Line2D([], [], color="0.25", lw=0, marker="o", ms=7, markerfacecolor="none",
               label="Table 1, this batch's coherence (hollow)"),
        Line2D([], [], color="0.35", ls="--", lw=1.1,
               label="Table 1 limit: incoherent examples, ratio = p"),
        Line2D([], [], color="0.35", ls=":", lw=1.3,
               label=f"Table 1 limit: coherent examples, ratio = p·N (N = {n})"),
    ]
    fig.suptitle(_subtitle(r), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False,
               handlelength=2.4)
    return fig


def _jitter(layer: dict, layers: list[dict]) -> float:
    """Spreads layers of equal fan-in a little apart along the (log) x axis."""
    same = [l for l in layers if l["fan_in"] == layer["fan_in"]]
    if len(same) == 1:
        return 1.0
    i = same.index(layer)
    return 1.07 ** (i - (len(same) - 1) / 2)
