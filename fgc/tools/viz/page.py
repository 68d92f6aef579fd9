"""``fgc viz SPEC -o graph.html``: one self-contained page to explore a spec under every
algorithm.

The page holds everything inline (no network): each algorithm's drawing as SVG, the facts
about every node as JSON, and a little script for pan/zoom (drag, wheel, ``fit``), clicking
a node (a panel with its op, shapes, parameters, group, update rule, credit and the losses
it reaches) and switching the algorithm. Every algorithm's view is computed here, once;
the script only shows them.

The drawing is Graphviz's picture of :func:`fgc.tools.viz.dot.to_dot` when ``dot`` is on
PATH; without it fgc lays the graph out itself (one column per block, its local losses
under it), so the page works the same, only plainer.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from fgc.errors import FgError, plural
from fgc.graph.ir import Graph
from fgc.tools.viz.facts import (FINAL_FILL, LOSS_FILL, NOISE, NOISE_FILL, OFF, OFF_FILL, STOP,
                                 STOP_STYLE, _count, _noise, _shape, _View, describe_estimator,
                                 op_label, replication_text)
from fgc.tools.viz.files import atomic_write, have_dot, run_dot


def write_page(program, path: str | Path, algorithm: str | None = None,
               graphviz: bool | None = None) -> dict:
    """Writes the page of every algorithm ``program`` knows (presets and the spec's).

    Args:
      program: a loaded :class:`~fgc.plan.program.Program`.
      algorithm: the view shown first (default: the spec's ``train.algorithm``, else bp).
      graphviz: draw with Graphviz (default: when ``dot`` is on PATH).

    Returns:
      The page's data (what :func:`page_data` returns).
    """
    data = page_data(program, algorithm, graphviz)
    atomic_write(Path(path), page_html(data).encode("utf-8"))
    return data


def page_data(program, algorithm: str | None = None, graphviz: bool | None = None) -> dict:
    """Every algorithm's view of ``program``: ``{"title", "order", "selected", "views"}``.

    An algorithm the spec cannot run keeps its place with the reason (``error``).
    """
    selected = algorithm or program.train.algorithm or "bp"
    if selected not in program.algorithms:
        program.plan(selected)  # raises the located "unknown algorithm" error
    views = {}
    for name in program.algorithms:
        try:
            plan = program.plan(name)
        except FgError as e:
            views[name] = {"error": str(e).splitlines()[0]}
            continue
        views[name] = plan_view(plan, graphviz)
    if "error" in views[selected]:
        program.plan(selected)  # the chosen one must run: raise its diagnostics
    g = program.graph
    return {"title": g.meta.get("title") or str(program.path), "spec": str(program.path),
            "order": list(program.algorithms), "selected": selected, "views": views,
            "graphviz": any(v.get("drawing") == "graphviz" for v in views.values())}


def plan_view(plan, graphviz: bool | None = None) -> dict:
    """One algorithm's view: a summary line, the facts of every drawn node, the SVG."""
    v = _View(plan)
    a = plan.algorithm
    nodes = {}
    for n in v.g.topo():
        d = v.g.node(n)
        if d.role in ("input", "op"):
            nodes[n] = _op_info(v, n)
    for loss in v.g.losses.values():
        if loss.head_nodes:
            nodes[f"head:{loss.id}"] = _head_info(v, loss)
        nodes[loss.id] = _loss_info(v, loss)
    use_dot = have_dot() if graphviz is None else graphviz
    if use_dot:
        from fgc.tools.viz.dot import to_dot
        svg = run_dot(to_dot(plan), "svg", Path("graph.svg")).decode("utf-8")
        svg = svg[svg.index("<svg"):]
    else:
        svg = fallback_svg(v)
    return {"summary": f"{a.name}: target {a.target}, greedy {str(a.greedy).lower()}, "
                       f"{describe_estimator(a.estimator)}"
                       + ("" if a.source == "preset" else f" (defined in {a.source})"),
            "nodes": nodes, "svg": svg, "drawing": "graphviz" if use_dot else "fgc"}


# --- what the panel says -------------------------------------------------------------------

def credit_lines(plan, nid: str, rule: str) -> list[str]:
    """Which loss replicas a change at ``nid`` answers to, one line per loss it reaches.

    The page's only question to the credit rules: the plan's credit map for sites and
    weights (:meth:`fgc.plan.program.Plan.credit_map`), the same rule for other nodes."""
    from fgc.plan.credit import credit_of
    graph = plan.graph
    cmap = plan.credit_map(rule)
    found = cmap.sites.get(nid, cmap.weights.get(nid))
    credits = found if found is not None else credit_of(graph, nid, rule)
    out = []
    for c in credits:
        loss = graph.losses[c.loss]
        parts = ["its own example" if c.examples else "every example (batch statistics)"]
        if "patches" in loss.replicate:
            parts.append("its own patch" if c.patches else f"the sum over {loss.patches} patches")
        if "groups" in loss.replicate:
            parts.append(f"its own group of {c.groups}" if c.groups
                         else f"the sum over {loss.groups} groups")
        out.append(f"{_short(c.loss)}: {', '.join(parts)}")
    return out


def _short(loss_id: str) -> str:
    return loss_id.removeprefix("loss:")


def _group_facts(v: _View, group: str | None) -> dict:
    if group is None:
        return {}
    grp = v.plan.groups[group]
    est = v.plan.estimator_of(group)
    rule = describe_estimator(est) + f" · lr ×{grp.lr_scale:g}"
    if grp.optimizer is not None:
        rule += f" · {grp.optimizer.name}({', '.join(f'{k}={x}' for k, x in grp.optimizer.kwargs)})"
    if grp.weight_decay is not None:
        rule += f" · weight decay {grp.weight_decay:g}"
    return {"group": group, "rule": rule, "color": v.colors[group], "estimator": est}


def _op_info(v: _View, n: str) -> dict:
    g, d = v.g, v.g.node(n)
    info = {"id": n, "op": op_label(d), "kind": d.kind, "role": d.role,
            "block": d.block or "network",
            "shape": " + ".join(_shape(g.node(u).shape) for u in g.inputs(n))
                     + (" → " if g.inputs(n) else "") + _shape(d.shape),
            "params": [f"{k} {_shape(s)}" for k, s in d.params.items()],
            "num_params": d.num_params, "span": str(d.span) if d.span else None}
    facts = _group_facts(v, v.plan.assignment.get(n))
    est = facts.pop("estimator", None) or _live(v, n)
    info.update(facts)
    if d.kind == "perturb":
        site = v.site_noise(n)
        info["site"] = (f"activity noise ({_noise(site)}) enters here" if site is not None
                        else "dead: its noise reaches no loss under this algorithm (W601)"
                        if v.site_dead(n) else "inactive under this algorithm")
    wn = v.weight_noise(n)
    if wn is not None:
        info["site"] = f"its weights are perturbed ({_noise(wn)})"
    if d.role == "op":
        lines = credit_lines(v.plan, n, est.credit if est is not None else "exact")
        info["losses"] = [line.split(":", 1)[0] for line in lines]
        if est is not None and est.kind == "forward":
            info["credit"] = lines
            info["credit_rule"] = est.credit
        else:
            info["credit"] = ["exact gradient (backprop): no replicas to credit"]
    info["stops"] = [f"{STOP_STYLE[e.why or 'spec'][1]} from {u}" for u in g.inputs(n)
                     if (e := g.edge(u, n)).stop_gradient]
    info["stops"] += [f"{STOP_STYLE[e.why or 'spec'][1]} to {t}" for t in g.g.successors(n)
                      if (e := g.edge(n, t)).stop_gradient]
    return info


def _live(v: _View, n: str):
    """The estimator that learns the parameters of ``n``'s block (for an op without any)."""
    blk = v.g.node(n).block
    for m, grp in v.plan.assignment.items():
        if v.g.node(m).role == "op" and v.g.node(m).block == blk:
            return v.plan.estimator_of(grp)
    return v.plan.algorithm.estimator


def _head_info(v: _View, loss) -> dict:
    ops = [v.g.node(h) for h in loss.head_nodes]
    groups = [v.plan.assignment[h] for h in loss.head_nodes if h in v.plan.assignment]
    info = {"id": f"head:{loss.id}", "op": " → ".join(op_label(d) for d in ops), "kind": "head",
            "role": "head", "block": loss.name + " head",
            "shape": _shape(v.g.node(loss.source).shape) + " → " + _shape(ops[-1].shape),
            "params": [f"{h.split('/')[-1]}.{k} {_shape(s)}" for h in loss.head_nodes
                       for k, s in v.g.node(h).params.items()],
            "num_params": sum(d.num_params for d in ops), "losses": [_short(loss.id)],
            "credit": ["exact local gradient of its own loss"],
            "span": str(ops[0].span) if ops[0].span else None, "stops": []}
    facts = _group_facts(v, groups[0] if groups else None)
    facts.pop("estimator", None)
    info.update(facts)
    first = loss.head_nodes[0]
    if v.g.edge(loss.source, first).stop_gradient:
        info["stops"].append(f"{STOP_STYLE['readout'][1]} from {loss.source}")
    return info


def _loss_info(v: _View, loss) -> dict:
    rep = replication_text(loss)
    return {"id": loss.id, "op": f"{'final' if loss.final else loss.name} loss ({loss.kind})",
            "kind": "loss", "role": "loss", "block": loss.name,
            "shape": rep or "one value per example", "params": [], "num_params": 0,
            "trains": v.trains(loss.id), "losses": [_short(loss.id)],
            "span": str(loss.span) if loss.span else None, "stops": []}


# --- fgc's own drawing (no Graphviz) --------------------------------------------------------

W, H, GAP_X, GAP_Y, TOP = 180, 34, 40, 16, 40


def fallback_svg(v: _View) -> str:
    """The graph as SVG, laid out by fgc: a column per block, ops top to bottom, the block's
    local losses under it, the final loss in a column of its own."""
    from fgc.tools.viz.dot import html as esc  # XML escaping is the same
    g = v.g
    cols: dict[str, list[str]] = {}
    seen_block = False
    for n in g.topo():
        d = g.node(n)
        if d.role not in ("input", "op"):
            continue
        seen_block |= d.block is not None
        cols.setdefault(d.block or ("network" if not seen_block else "after"), []).append(n)
    outputs = g.meta.get("block_outputs", {})
    for loss in g.losses.values():
        key = next((b for b, o in outputs.items() if o == loss.source and not loss.final),
                   "losses")
        ids = ([f"head:{loss.id}"] if loss.head_nodes else []) + [loss.id]
        cols.setdefault(key, []).extend(ids)
    pos = {}
    for c, (name, ids) in enumerate(cols.items()):
        for r, n in enumerate(ids):
            pos[n] = (20 + c * (W + GAP_X), TOP + 20 + r * (H + GAP_Y))
    rep = {h: f"head:{l.id}" for l in g.losses.values() for h in l.head_nodes}
    out = []
    for c, (name, ids) in enumerate(cols.items()):
        x, y = 10 + c * (W + GAP_X), TOP
        h = len(ids) * (H + GAP_Y) + 20
        out.append(f'<rect class="frame" x="{x}" y="{y}" width="{W + 20}" height="{h}" rx="8" '
                   f'fill="#fbfbfd" stroke="#7a869a"/><text x="{x + 6}" y="{y + 14}" '
                   f'font-weight="bold" font-size="11">{esc(name)}</text>')
    edges = set()
    for u, t in g.g.edges:
        a, b = rep.get(u, u), rep.get(t, t)
        if a == b or (a, b) in edges or a not in pos or b not in pos:
            continue
        edges.add((a, b))
        e = g.edge(u, t)
        (x1, y1), (x2, y2) = pos[a], pos[b]
        sx, sy, tx, ty = x1 + W / 2, y1 + H, x2 + W / 2, y2
        if x1 != x2:
            sx, sy, tx, ty = x1 + W, y1 + H / 2, x2, y2 + H / 2
        mid = (sy + ty) / 2 if x1 == x2 else None
        d = (f"M{sx},{sy} C{sx},{mid} {tx},{mid} {tx},{ty}" if mid is not None
             else f"M{sx},{sy} C{sx + GAP_X},{sy} {tx - GAP_X},{ty} {tx},{ty}")
        style = (f'stroke="{STOP}" stroke-width="1.8" stroke-dasharray="5,3"' if e.stop_gradient
                 else 'stroke="#666"')
        label = (f'<text x="{(sx + tx) / 2 + 4}" y="{(sy + ty) / 2}" fill="{STOP}" '
                 f'font-size="9">{esc(STOP_STYLE[e.why or "spec"][1])}</text>'
                 if e.stop_gradient else "")
        out.append(f'<path class="edge" d="{d}" fill="none" {style} marker-end="url(#arrow)"/>'
                   + label)
    for n, (x, y) in pos.items():
        out.append(_fallback_node(v, n, x, y, esc))
    width = 20 + len(cols) * (W + GAP_X)
    height = TOP + 40 + max(len(ids) for ids in cols.values()) * (H + GAP_Y)
    title = esc(g.meta.get("title") or "spec")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'font-family="DejaVu Sans, sans-serif"><defs><marker id="arrow" viewBox="0 0 10 10" '
            f'refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>'
            f'<text x="10" y="22" font-size="15" font-weight="bold">{title} · '
            f'{esc(v.plan.algorithm.name)}</text>' + "".join(out) + "</svg>")


def _fallback_node(v: _View, n: str, x: float, y: float, esc) -> str:
    g = v.g
    fill, stroke, dash, cls = "white", "#444", "", "node"
    if n in g.losses:
        loss = g.losses[n]
        label, sub = f"{'final' if loss.final else loss.name} loss", replication_text(loss)
        fill = FINAL_FILL if loss.final else LOSS_FILL
        cls += " loss"
    elif n.startswith("head:"):
        loss = g.losses[n[5:]]
        label = " → ".join(op_label(g.node(h)) for h in loss.head_nodes)
        sub = f"head {loss.name}"
        grp = next((v.plan.assignment[h] for h in loss.head_nodes if h in v.plan.assignment), None)
        fill = v.colors[grp] if grp else fill
    else:
        d = g.node(n)
        label = op_label(d)
        sub = _shape(d.shape) + (f" · {_count(d.num_params)} params" if d.params else "")
        grp = v.plan.assignment.get(n)
        if grp is not None:
            fill = v.colors[grp]
        if d.kind == "perturb":
            on = v.site_noise(n) is not None
            fill, stroke = (NOISE_FILL, NOISE) if on else (OFF_FILL, OFF)
            label, dash = ("⚡ perturb", "") if on else ("perturb (off)", ' stroke-dasharray="4,2"')
            cls += " site-on" if on else " site-off"
        if v.weight_noise(n) is not None:
            stroke, sub = NOISE, sub + " · ⚡ W-noise"
    if len(label) > 27:  # what fits the box at 11 px; the panel has the whole of it
        label = label[:26] + "…"
    return (f'<g class="{cls}" data-id="{esc(n)}"><title>{esc(n)}</title>'
            f'<rect x="{x}" y="{y}" width="{W}" height="{H}" rx="6" fill="{fill}" '
            f'stroke="{stroke}"{dash}/><text x="{x + W / 2}" y="{y + 14}" text-anchor="middle" '
            f'font-size="11">{esc(label)}</text><text x="{x + W / 2}" y="{y + 27}" '
            f'text-anchor="middle" font-size="8" fill="#555">{esc(sub)}</text></g>')


# --- the page ------------------------------------------------------------------------------

def _asset(name: str) -> str:
    return resources.files("fgc.tools.viz").joinpath(name).read_text(encoding="utf-8")


def page_html(data: dict) -> str:
    """The page: the data as inline JSON, the stylesheet and the script inline."""
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("</", "<\\/").replace("<!--", "\\u003c!--")  # stays inside its <script>
    title = data["title"].replace("&", "&amp;").replace("<", "&lt;")
    n = len(data["order"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} · fgc viz</title>
<style>
{_asset("page.css")}
</style>
</head>
<body>
<header>
  <strong id="title">{title}</strong>
  <label>algorithm <select id="algorithm" aria-label="algorithm"></select></label>
  <span id="summary"></span>
  <span class="tools"><button id="zoom-in" title="zoom in">+</button><button id="zoom-out"
    title="zoom out">−</button><button id="fit" title="fit the drawing">fit</button></span>
</header>
<main>
  <div id="canvas" tabindex="0"></div>
  <aside id="panel"><p class="hint">Click a node to see its op, shapes, parameters, group,
  update rule, credit and the losses it reaches. Drag to pan, scroll to zoom; the
  {plural(n, "algorithm")} of this spec are in the menu above.</p></aside>
</main>
<script type="application/json" id="fgc-data">{blob}</script>
<script>
{_asset("page.js")}
</script>
</body>
</html>
"""
