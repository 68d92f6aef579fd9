"""What a drawing says about a plan, shared by the DOT picture and the HTML page: op labels,
estimator descriptions, which perturbation sites are live, what each loss trains."""

from __future__ import annotations

import networkx as nx

from fgc.errors import plural
from fgc.front.config import Estimator
from fgc.graph.ir import Graph, NodeData
from fgc.graph.ops import OPS, REQUIRED

BLOCKS_PER_ROW = 6

FONT = "DejaVu Sans"
NOISE = "#f57c00"  # orange: where noise enters
NOISE_FILL = "#ffcc80"
STOP = "#d32f2f"  # red: where gradients stop
OFF = "#9e9e9e"  # grey: inactive
OFF_FILL = "#f2f2f2"
LOSS_FILL = "#f8bbd0"
FINAL_FILL = "#f06292"
PALETTE = ("#cfe2f3", "#d9ead3", "#fff2cc", "#d9d2e9", "#d0e0e3", "#e6dccb", "#e2efc6",
           "#e8d8f0", "#c9daf8", "#fce8b2")
STOP_STYLE = {  # reason -> (style, label, legend text)
    "greedy": ("dashed", "⊘ greedy", "stop-gradient between blocks (greedy)"),
    "readout": ("dotted", "⊘ readout", "stop-gradient into a head: this loss trains its head only"),
    "spec": ("bold", "⊘ stopgrad", "stop-gradient written in the spec (stopgrad)"),
}


def _count(n: int) -> str:
    return f"{n:,}"


def _shape(s) -> str:
    if s is None:
        return "?"
    return "×".join(map(str, s)) if s else "scalar"


def describe_estimator(est: Estimator) -> str:
    if est.kind == "backprop":
        return "backprop"
    what = {"activity": "activity", "weights": "weight"}.get(est.perturb, est.perturb)
    return f"forward gradient, {what} noise: {est.noise}, K={est.tangents}"


def _noise(est: Estimator) -> str:
    return f"{est.noise}, K={est.tangents}"


def op_label(d: NodeData) -> str:
    """The op with its key arguments, e.g. ``dense 512``, ``group_linear 512 /16 groups``."""
    a = d.attrs
    k = d.kind
    extra = []
    if "init" in a and a["init"] != "default":
        extra.append(f"init={a['init']}")
    if a.get("bias") is False:
        extra.append("no bias")
    if k in ("dense", "linear"):
        s = f"{k} {a['out']}"
    elif k == "group_linear":
        s = f"group_linear {a['out']} /{plural(a['groups'], 'group')}"
    elif k == "token_mix":
        p = d.shape[0] if d.shape else "P"
        s = f"token_mix {p}→{p}"
    elif k == "conv":
        s = f"conv {a['out']} {a['kernel']}×{a['kernel']}"
        if a.get("stride", 1) != 1:
            s += f" /{a['stride']}"
        if a.get("padding") == "valid":
            extra.append("valid")
    elif k in ("maxpool", "avgpool"):
        s = f"{k} {a['size']}×{a['size']}"
        if a.get("stride") not in (0, a["size"]):
            s += f" /{a['stride']}"
    elif k in ("layernorm", "groupnorm"):
        s = k if a.get("groups", 1) == 1 else f"{k}/{a['groups']}"
        if a.get("affine") and k == "layernorm":
            extra.append("affine")
    elif k == "patchify":
        s = f"patchify {a['per_side']}×{a['per_side']}"
    elif k == "mean":
        s = f"mean({a.get('axis', 'patches')})"
    elif k == "input":
        s = f"input {a.get('name', '')}".strip()
    elif k in OPS:  # anything else: positional required args, then changed defaults
        s = k
        for arg in OPS[k].args:
            if arg.name not in a:
                continue
            if arg.default is REQUIRED:
                s += f" {a[arg.name]}"
            elif a[arg.name] != arg.default and arg.name not in ("init", "bias"):
                extra.append(f"{arg.name}={a[arg.name]}")
    else:
        s = k
    return s + (f" ({', '.join(extra)})" if extra else "")


class _View:
    """Facts about a plan the drawing needs, computed once."""

    def __init__(self, plan):
        self.plan = plan
        self.g: Graph = plan.graph
        self.colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(plan.groups)}
        self.blocks = self.g.blocks
        self.flow = nx.DiGraph()  # the graph without stop-gradient edges
        self.flow.add_nodes_from(self.g.g)
        self.flow.add_edges_from((u, v) for u, v in self.g.g.edges
                                 if not self.g.edge(u, v).stop_gradient)

    def est(self, nid: str) -> Estimator | None:
        grp = self.plan.assignment.get(nid)
        return None if grp is None else self.plan.estimator_of(grp)

    def weight_noise(self, nid: str) -> Estimator | None:
        e = self.est(nid)
        return e if e is not None and e.kind == "forward" and e.perturb == "weights" else None

    def site_noise(self, nid: str) -> Estimator | None:
        """The activity-noise estimator live at a perturb site, or None if the site is off.

        A site is live when the parameters of its block (all backbone parameters for
        a network-level site) are learned by forward gradient with activity noise, and
        its noise reaches some loss (the plan's credit map); a dead site is off."""
        if self.site_dead(nid):
            return None
        blk = self.g.node(nid).block
        owners = [m for m in self.plan.assignment
                  if self.g.node(m).role == "op" and self.g.node(m).block == blk]
        if not owners:
            owners = [m for m in self.plan.assignment if self.g.node(m).role == "op"]
        for m in owners:
            e = self.est(m)
            if e.kind == "forward" and e.perturb == "activity":
                return e
        return None

    def site_dead(self, nid: str) -> bool:
        """Whether a site's noise reaches no loss under this plan (W601): drawn as off."""
        return not self.plan.credit_map().sites.get(nid, (True,))

    def is_probe(self, loss_id: str) -> bool:
        """Whether the loss's gradient reaches no backbone parameters."""
        return not any(self.g.node(n).role == "op" and self.g.node(n).params
                       for n in nx.ancestors(self.flow, loss_id))

    def trains(self, loss_id: str) -> str:
        """What the loss's gradient reaches: blocks (and heads) with parameters."""
        up = nx.ancestors(self.flow, loss_id)
        names, head = [], False
        for n in self.g.topo():
            if n not in up or not self.g.node(n).params:
                continue
            d = self.g.node(n)
            if d.role == "head":
                head = True
                continue
            name = d.block or "network"
            if name not in names:
                names.append(name)
        if not names:
            return "trains its head only" if head else "trains nothing"
        order = ["network", *self.blocks]
        idx = [order.index(x) for x in names if x in order]
        if len(names) > 2 and idx == list(range(idx[0], idx[0] + len(idx))):
            what = f"{names[0]} … {names[-1]}"
        else:
            what = ", ".join(names)
        return f"trains {what}" + (" + head" if head else "")


def replication_text(loss) -> str:
    """``×64 patches ×16 groups = 1024 replicas`` (empty for a loss that is not replicated)."""
    parts = []
    if "patches" in loss.replicate:
        parts.append(f"×{loss.patches} {'patch' if loss.patches == 1 else 'patches'}")
    if "groups" in loss.replicate:
        parts.append(f"×{loss.groups} {'group' if loss.groups == 1 else 'groups'}")
    if not parts:
        return ""
    n = loss.replicas
    return " ".join(parts) + f" = {n} {'replica' if n == 1 else 'replicas'}"


