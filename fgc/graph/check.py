"""The checker: every well-formedness rule, reported all at once with stable codes."""

from __future__ import annotations

from fgc.graph.build import Builder, Diags
from fgc.errors import plural
from fgc.graph.ir import Graph
from fgc.graph.loss_kinds import LOSS_KINDS
from fgc.graph.ops import OPS, group_count
from fgc.graph.passes import infer_shapes
from fgc.front import syntax as S


def build_and_check(spec: S.SpecFile, diags: Diags) -> Graph:
    """Elaborates ``spec`` to a graph, infers shapes and runs the semantic checks."""
    graph = Builder(spec, diags).build()
    infer_shapes(graph, diags)
    _check_losses(graph, diags)
    _check_sites(graph, diags)
    return graph


def _check_losses(graph: Graph, diags: Diags) -> None:
    classes = graph.meta.get("classes")
    for loss in graph.losses.values():
        src = graph.node(loss.source)
        heads = [graph.node(n) for n in loss.head_nodes]
        last = heads[-1] if heads else src
        kind = LOSS_KINDS[loss.kind]
        if kind.output == "embedding":
            if last.shape is not None and len(last.shape) != 1:
                diags.add("E401", f"head of loss `{loss.name}` gives shape {list(last.shape)}, "
                          f"but a `{loss.kind}` loss needs an embedding [D] (a vector per "
                          "example)", loss.span, "pool patches and end the head with linear(D)")
        elif last.shape is not None and classes and last.shape != (classes,):
            diags.add("E401", f"head of loss `{loss.name}` gives shape {list(last.shape)}, "
                      f"but the loss needs [{classes}] (one logit per class)", loss.span,
                      f"end the head with linear(classes) and pool patches before it")
        if src.shape is None:
            continue
        if "patches" in loss.replicate:
            if len(src.shape) != 2:
                diags.add("E402", f"loss `{loss.name}` replicates over patches, but `{loss.source}` "
                          f"has shape {list(src.shape)}, not (P, D)", loss.span,
                          "replicate over patches only on patch grids; drop `patches`")
                continue
            loss.patches = src.shape[0]
        if loss.replicate:
            kinds = [h.kind for h in heads]
            if "mean" not in kinds or kinds.index("mean") != len(kinds) - 2 or \
                    kinds[-1] not in ("linear", "dense"):
                diags.add("E405", f"a replicated loss needs a head of the form "
                          f"`<per-patch ops> | mean(patches) | linear(classes)`; "
                          f"`{loss.name}` has {' | '.join(kinds)}", loss.span,
                          "fgc fuses this form into one pass; other heads cannot be replicated")
                continue
            for h in heads[: kinds.index("mean")]:
                op = OPS[h.kind]
                if op.mixes_patches and "patches" in loss.replicate:
                    diags.add("E403", f"`{h.kind}` mixes patches, so loss `{loss.name}` cannot be "
                              "replicated per patch", h.span, "move it out of the head")
                g = group_count(op, h.attrs)
                if "groups" in loss.replicate and (op.mixes_channels or g is not None and g % loss.groups):
                    diags.add("E404", f"`{h.kind}` mixes channel groups, so loss `{loss.name}` "
                              f"cannot be replicated over {plural(loss.groups, 'group')}", h.span,
                              f"use a per-group op, e.g. layernorm(groups={loss.groups})")
        if "groups" in loss.replicate:
            width = src.shape[-1]
            if width % loss.groups:
                diags.add("E302", f"loss `{loss.name}`: group count {loss.groups} does not "
                          f"divide width {width}", loss.span,
                          f"use a divisor of {width}")
                continue
            loss.groups = loss.groups
        for h in heads:
            if h.kind == "perturb":
                diags.add("E406", "perturbation sites cannot sit in a loss head", h.span,
                          "heads always learn by their exact gradient; remove `perturb`")


def _check_sites(graph: Graph, diags: Diags) -> None:
    for nid in graph.g:
        d = graph.node(nid)
        if d.kind == "perturb" and d.role == "op":
            preds = graph.inputs(nid)
            if preds and graph.node(preds[0]).kind == "perturb":
                diags.add("E407", "two perturbation sites in a row", d.span,
                          "one `perturb` per activation is enough")
            if d.shape is not None and graph.g.out_degree(nid) == 0 and nid not in graph.cut:
                diags.add("E407", "perturbation site feeds nothing", d.span)
