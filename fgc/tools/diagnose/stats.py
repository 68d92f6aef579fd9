"""`fgc diagnose`'s statistics: the estimated parameter arrays, and the cosines, variances
and Table 1 ratios per block, parameter group and layer computed from the measured sums."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fgc.tools.diagnose.base import KINDS
from fgc.tools.diagnose.core import trainable

# --- what is measured ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    """One estimated parameter array: where it sits in the gradient pytree's leaves."""

    index: int
    node: str
    param: str
    shape: tuple[int, ...]
    kind: str
    block: str
    group: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _leaves(net, plan, nodes: set[str]) -> list[Leaf]:
    import jax
    kinds = {s.id: s.kind for s in net.steps}
    position = {s.id: i for i, s in enumerate(net.steps)}
    flat = jax.tree_util.tree_flatten_with_path(trainable(net))[0]
    out = []
    for i, (path, leaf) in enumerate(flat):
        node = path[1].key  # (.layers, [node id], .param)
        if node in nodes:
            out.append(Leaf(i, node, getattr(path[-1], "name", str(path[-1])), tuple(leaf.shape),
                            kinds[node], node.split("/", 1)[0], plan.assignment[node]))
    # Pytree leaves come in the order of sorted node ids; tables read in network order.
    return sorted(out, key=lambda l: (position[l.node], l.index))


def _fans(kind: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in and fan-out of a weight: per group for a group-linear layer."""
    if kind == "group_linear" and len(shape) == 3:
        return shape[1], shape[2]
    if kind == "token_mix":
        return shape[0], shape[-1]
    return math.prod(shape[:-1]), shape[-1]


def _units(leaves: list[Leaf]) -> list[tuple[tuple[str, str], list[int]]]:
    """Leaf indices per (block instance, parameter group), in network order."""
    units: dict[tuple[str, str], list[int]] = {}
    for i, l in enumerate(leaves):
        units.setdefault((l.block, l.group), []).append(i)
    order = {}
    for i, l in enumerate(leaves):
        order.setdefault((l.block, l.group), i)
    return sorted(units.items(), key=lambda kv: order[kv[0]])


def _cosines(d: np.ndarray, norm_sq: np.ndarray, which: int) -> np.ndarray:
    """Per batch and draw, cos(ĝ, g) over a set of leaves. ``d``: [B, R, leaves, 3]
    (ĝ·g, ĝ·g_e2e, ‖ĝ‖²); ``norm_sq``: [B, leaves] of ‖g‖²."""
    num = d[..., which].sum(-1)
    den = np.sqrt(d[..., 2].sum(-1) * norm_sq.sum(-1)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _unit_stats(idx, label, leaves, ks, rules, true_sq, e2e_sq, var, dots) -> dict:
    if isinstance(label, tuple):
        block, group = label
    else:
        block, group = label, None
    out = {"block": block, "group": group,
           "layers": sorted({leaves[i].node for i in idx}, key=[l.node for l in leaves].index),
           "params": int(sum(leaves[i].size for i in idx))}
    tsq = true_sq[:, idx]
    for kind in KINDS:
        if kind not in rules:
            out[kind] = None
            continue
        s = {"cos_target": [], "cos_target_std": [], "cos_e2e": [], "cos_e2e_std": [],
             "variance": []}
        for ki in range(len(ks)):
            d = dots[kind][ki][:, :, idx]
            c = _cosines(d, tsq, 0)
            s["cos_target"].append(_mean(c))
            s["cos_target_std"].append(_std(c))
            if e2e_sq is not None:
                c = _cosines(d, e2e_sq[:, idx], 1)
                s["cos_e2e"].append(_mean(c))
                s["cos_e2e_std"].append(_std(c))
            else:
                s["cos_e2e"].append(None)
                s["cos_e2e_std"].append(None)
            tot = tsq.sum(-1)
            v = var[kind][ki][:, idx].sum(-1)
            s["variance"].append(_mean(np.where(tot > 0, v / np.where(tot > 0, tot, 1), np.nan)))
        out[kind] = s
    return out


def _layer_stats(i, leaf: Leaf, ks, rules, true_sq, ex_sq, var, dots, batch, per_ex) -> dict:
    p, q = _fans(leaf.kind, leaf.shape)
    out = {"layer": leaf.node, "param": leaf.param, "block": leaf.block, "kind": leaf.kind,
           "shape": list(leaf.shape), "fan_in": p, "fan_out": q}
    tot = true_sq[:, i]
    for kind in KINDS:
        if kind not in rules:
            out[kind] = None
            continue
        v = var[kind][:, :, i]  # [K, batches]
        cos = [_cosines(dots[kind][ki][:, :, [i]], true_sq[:, [i]], 0) for ki in range(len(ks))]
        out[kind] = {
            "variance": [_mean(np.where(tot > 0, vk / np.where(tot > 0, tot, 1), np.nan))
                         for vk in v],
            "cos_target": [_mean(c) for c in cos],
        }
    ratio = ratio_by_k = None
    if all(k in rules for k in KINDS):
        vw, va = var["weights"][:, :, i].mean(1), var["activity"][:, :, i].mean(1)
        ks_arr = np.asarray(ks, np.float64)
        if (va > 0).all():
            ratio_by_k = list(vw / va)
            ratio = float((ks_arr * vw).mean() / (ks_arr * va).mean())
    predicted = coherence = None
    if per_ex and ex_sq[:, i].any():
        mean_ex = ex_sq[:, i] / batch  # mean over examples of ‖∇Jₙ‖²; ‖ḡ‖² is true_sq
        coherence = float(tot.sum() / mean_ex.sum())
        predicted = float((p * q + 1) / (q + 1) * batch * coherence)
    out.update({"ratio_measured": ratio, "ratio_measured_by_K": ratio_by_k,
                "ratio_predicted": predicted, "coherence": coherence})
    return out


def _mean(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _std(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.std()) if a.size else None


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v
