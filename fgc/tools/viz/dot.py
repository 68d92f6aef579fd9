"""`fgc viz`: draws a plan as a Graphviz picture of where losses sit, how they
replicate, where noise enters, where gradients stop and which parameters learn how.

:func:`to_dot` writes DOT text itself (no Python graphviz dependency);
:func:`render` writes ``.dot`` directly and pipes through the ``dot`` program for
``.svg``, ``.png`` and ``.pdf``.

The picture, top to bottom:

* a title with the spec, the algorithm (target, greedy, estimator) and the total
  parameter count;
* every block instance (``stem.1``, ``mixer.2`` ...) as a framed column of its ops,
  each op labelled with its key arguments, its output shape where that changes,
  and its parameter count; layers with parameters are filled with their
  parameter group's colour;
* perturbation sites as orange diamonds (⚡) when the plan perturbs activities
  there, grey dashed diamonds when it does not; layers that carry weight noise
  get an orange border and ``⚡ W-noise``;
* every loss instance as an octagon (the final loss a double octagon) saying how
  it replicates (``×64 patches ×16 groups = 1024 replicas``) and what it trains,
  fed by its head drawn as one compact node (``layernorm/16 → mean → linear 10``);
* stop-gradient edges in red with a tee and ``⊘ greedy`` / ``⊘ readout`` /
  ``⊘ stopgrad``: dashed between blocks (greedy), dotted into a head (readout),
  bold for the spec's own ``stopgrad``;
* a legend: shapes, edge styles and one row per parameter group with its
  estimator, learning-rate scale and parameter count.

Blocks stand side by side as columns, so a deep network stays compact: the edge
that carries a block's output on to the next block runs from the bottom of one
column to the top of the next. After six columns a new row starts under the first,
reached through a pair of ``to …`` / ``from …`` connectors instead of a long edge.
A block's local losses sit inside its frame; the final loss hangs off the last block.

DOT nodes and edges carry a ``class`` (``site-on``, ``site-off``, ``w-noise``,
``stop-greedy``, ``stop-readout``, ``stop-spec``, ``loss-probe`` ...) that says what
they mean, for tests and for styling SVG output.
"""

from __future__ import annotations

from fgc.graph.ops import OPS
from fgc.tools.viz.facts import (BLOCKS_PER_ROW, FINAL_FILL, FONT, LOSS_FILL, NOISE, NOISE_FILL,
                                 OFF, OFF_FILL, PALETTE, STOP, STOP_STYLE, _count, _noise,
                                 _shape, _View, describe_estimator, op_label, replication_text)

# --- escaping ------------------------------------------------------------------------

def quote(s: object) -> str:
    """A DOT double-quoted string (ids, plain attributes)."""
    s = str(s).replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{s}"'


def html(s: object) -> str:
    """Text escaped for a Graphviz HTML-like label; newlines become line breaks."""
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace('"', "&quot;").replace("{", "&#123;").replace("}", "&#125;")
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return s.replace("\n", "<BR/>")


def _attrs(**kw) -> str:
    parts = []
    for k, v in kw.items():
        if v is None:
            continue
        if isinstance(v, Html):
            parts.append(f"{k}=<{v.text}>")
        else:
            parts.append(f"{k}={quote(v)}")
    return "[" + ", ".join(parts) + "]" if parts else ""


class Html:
    """An already-escaped HTML-like label body (written between < >)."""

    def __init__(self, text: str):
        self.text = text


def _small(text: str, color: str = "#555555", size: int = 8) -> str:
    return f'<FONT POINT-SIZE="{size}" COLOR="{color}">{html(text)}</FONT>'


# --- DOT -------------------------------------------------------------------------------

def to_dot(plan) -> str:
    """Graphviz DOT text for a plan."""
    v = _View(plan)
    g = v.g
    out: list[str] = []
    w = out.append
    title = g.meta.get("title") or g.meta.get("path") or "spec"
    w("digraph fgc {")
    w(f"  graph {_attrs(rankdir='TB', newrank='true', nodesep='0.18', ranksep='0.22', fontname=FONT, fontsize='11', labelloc='t', labeljust='l', pad='0.2', label=Html(_title(plan, title)))};")
    w(f"  node {_attrs(shape='box', style='rounded,filled', fillcolor='white', fontname=FONT, fontsize='10', height='0.3', margin='0.08,0.03', penwidth='1')};")
    w(f"  edge {_attrs(color='#666666', arrowsize='0.6', fontname=FONT, fontsize='9')};")

    # head ops are drawn as one node per loss
    rep = {}
    for loss in g.losses.values():
        for h in loss.head_nodes:
            rep[h] = f"head:{loss.id}"

    # backbone nodes, clustered by block instance
    by_block: dict[str | None, list[str]] = {}
    for n in g.topo():
        d = g.node(n)
        if d.role in ("input", "op"):
            by_block.setdefault(d.block if d.role == "op" else None, []).append(n)
    for n in by_block.get(None, []):
        w(f"  {quote(n)} {_node_attrs(v, n)};")
    # a loss on a block's output is drawn inside that block's frame
    outputs = g.meta.get("block_outputs", {})
    local: dict[str, list] = {}
    for loss in g.losses.values():
        for b in v.blocks:
            if not loss.final and outputs.get(b) == loss.source:
                local.setdefault(b, []).append(loss)
    for i, b in enumerate(v.blocks):
        nodes = by_block.get(b, [])
        params = sum(g.node(n).num_params for n in nodes)
        bdef = g.node(nodes[0]).block_def if nodes else None
        lab = f"<B>{html(b)}</B>"
        if bdef and not b.startswith(f"{bdef}."):
            lab += _small(f"  block {bdef}", size=9)
        if params:
            lab += "<BR/>" + _small(f"{_count(params)} params", size=9)
        w(f"  subgraph {quote(f'cluster_{b}')} {{")
        w(f"    graph {_attrs(label=Html(lab), style='rounded', color='#7a869a', bgcolor='#fbfbfd', fontsize='11', labeljust='l', margin='10')};")
        for n in nodes:
            w(f"    {quote(n)} {_node_attrs(v, n)};")
        for loss in local.get(b, []):
            _loss_nodes(v, loss, w, "    ")
        w("  }")

    # keep the blocks of one row side by side, in order; a later row hangs under the
    # first column of the row before (edges between rows go through connectors below)
    drawn = [b for b in v.blocks if by_block.get(b)]
    rows = [drawn[r:r + BLOCKS_PER_ROW] for r in range(0, len(drawn), BLOCKS_PER_ROW)]
    row_of = {b: k for k, blocks in enumerate(rows) for b in blocks}
    for k, blocks in enumerate(rows):
        row = [by_block[b][0] for b in blocks]
        if len(row) > 1:
            w(f"  {{ rank=same; {'; '.join(quote(n) for n in row)}; }}")
            w(f"  {' -> '.join(quote(n) for n in row)} {_attrs(style='invis')};")
        if k:
            above = rows[k - 1][0]
            bottom = local[above][-1].id if local.get(above) else by_block[above][-1]
            w(f"  {quote(bottom)} -> {quote(row[0])} {_attrs(style='invis', weight='10')};")

    # the other heads and losses
    for loss in g.losses.values():
        if not any(loss in ls for ls in local.values()):
            _loss_nodes(v, loss, w, "  ")

    # edges; those into heads first: dot then places a block's head and loss beside its
    # column, leaving the other side free for the edges that run on to the next block
    seen = set()
    connectors: set[str] = set()
    pos = {n: i for i, n in enumerate(g.topo())}
    order = sorted(g.g.edges, key=lambda e: (g.node(e[1]).role == "op", pos[e[1]],
                                             g.edge(*e).port))
    for u, t in order:
        ru, rt = rep.get(u, u), rep.get(t, t)
        if ru == rt or (ru, rt) in seen:
            continue
        seen.add((ru, rt))
        e = g.edge(u, t)
        du, dt = g.node(u), g.node(t)
        kw = {}
        cross = (du.role == "op" and dt.role == "op" and du.block in row_of
                 and dt.block in row_of and du.block != dt.block)
        if cross:
            kw.update(color="#37474f", penwidth="1.4")
        if cross and row_of[du.block] == row_of[dt.block]:
            # the next block is the next column: from the bottom of one to the top of the next
            kw.update(constraint="false", tailport="e",
                      headport="n" if t == by_block[dt.block][0] else "w")
        elif cross:
            # the next block starts a new row: connectors instead of a long edge
            out_c, in_c = f"to:{u}:{dt.block}", f"from:{u}:{dt.block}"
            if out_c not in connectors:
                connectors.add(out_c)
                conn = dict(shape="cds", style="filled", fillcolor="#eceff1", fontsize="9",
                            height="0.25", **{"class": "connector"})
                w(f"  {quote(out_c)} {_attrs(label=f'to {dt.block}', **conn)};")
                w(f"  {quote(in_c)} {_attrs(label=f'from {du.block}', **conn)};")
                w(f"  {quote(u)} -> {quote(out_c)} {_attrs(color='#37474f', penwidth='1.4')};")
            ru = in_c
        if dt.kind == "add" and e.port > 0:
            kw.update(headlabel="+", labelfontsize="9")
            kw.setdefault("style", "solid")
        if e.stop_gradient:
            style, text, _ = STOP_STYLE.get(e.why or "spec", STOP_STYLE["spec"])
            kw.update(color=STOP, fontcolor=STOP, style=style, penwidth="1.8",
                      arrowhead="teenormal", arrowsize="0.8", label=text,
                      **{"class": f"stop stop-{e.why or 'spec'}"})
            kw.pop("headlabel", None)
        w(f"  {quote(ru)} -> {quote(rt)} {_attrs(**kw)};")

    _legend(v, w)
    w("}")
    return "\n".join(out) + "\n"


def _title(plan, title: str) -> str:
    a = plan.algorithm
    est = describe_estimator(a.estimator)
    target = ("local: each block's own losses train it" if a.target == "local"
              else "global: the final loss trains the network")
    lines = [f'<FONT POINT-SIZE="16"><B>{html(title)}</B></FONT>',
             f"algorithm <B>{html(a.name)}</B>  ·  target = {html(target)}  ·  "
             f"greedy = {str(a.greedy).lower()}  ·  estimator = {html(est)}",
             f"{_count(plan.graph.num_params())} parameters"]
    return "<BR ALIGN=\"LEFT\"/>".join(lines) + "<BR ALIGN=\"LEFT\"/>"


def _node_attrs(v: _View, n: str) -> str:
    g = v.g
    d = g.node(n)
    tip = n + (f"  ({d.span})" if d.span else "")
    if d.kind == "perturb":
        est = v.site_noise(n)
        if est is not None:
            lab = (f"<B>⚡ perturb</B><BR/>{_small('activity noise:', '#6d3a00')}"
                   f"<BR/>{_small(_noise(est), '#6d3a00')}")
            return _attrs(label=Html(lab), shape="diamond", style="filled", fillcolor=NOISE_FILL,
                          color=NOISE, penwidth="2", margin="0.02", tooltip=tip,
                          fontcolor="#4e2a00", **{"class": "site site-on"})
        return _attrs(label=Html(_small("perturb (off)", OFF, 8)), shape="diamond",
                      style="dashed,filled", fillcolor=OFF_FILL, color=OFF, fontcolor=OFF,
                      height="0.3", margin="0.01", tooltip=tip, **{"class": "site site-off"})
    if d.role == "input":
        lab = f"<B>{html(op_label(d))}</B><BR/>{_small(_shape(d.shape))}"
        return _attrs(label=Html(lab), shape="invhouse", style="filled", fillcolor="#eeeeee",
                      tooltip=tip)
    role = OPS[d.kind].role if d.kind in OPS else "op"
    ins = [g.node(u).shape for u in g.inputs(n)]
    lines = [f"<B>{html(op_label(d))}</B>" if d.params or role in ("linear", "shape")
             else html(op_label(d))]
    info = []
    if role in ("linear", "shape", "pool") or not ins or ins[0] != d.shape:
        info.append(_shape(d.shape))
    if d.params:
        info.append(f"{_count(d.num_params)} params")
    if info:
        lines.append(_small("  ·  ".join(info)))
    kw = dict(tooltip=tip)
    grp = v.plan.assignment.get(n)
    if grp is not None:
        kw["fillcolor"] = v.colors[grp]
    wn = v.weight_noise(n)
    if wn is not None:
        lines.append(f'<FONT POINT-SIZE="8" COLOR="{NOISE}"><B>⚡ W-noise</B> {html(_noise(wn))}</FONT>')
        kw.update(color=NOISE, penwidth="3", **{"class": "w-noise"})
    if role == "grad":
        kw.update(color=STOP, fontcolor=STOP)
    if role in ("act", "norm", "merge", "grad") and not d.params:
        kw.update(fontsize="9", height="0.22")
    return _attrs(label=Html("<BR/>".join(lines)), **kw)


def _head_attrs(v: _View, loss) -> str:
    g = v.g
    ops = [g.node(h) for h in loss.head_nodes]
    chain = "\n→ ".join(op_label(d) for d in ops)
    params = sum(d.num_params for d in ops)
    groups = [v.plan.assignment[h] for h in loss.head_nodes if h in v.plan.assignment]
    lines = [html(chain)]
    info = [f"head {loss.name}"]
    if params:
        info.append(f"{_count(params)} params")
    lines.append(_small("  ·  ".join(info)))
    kw = dict(fillcolor=v.colors[groups[0]] if groups else "white")
    ests = [v.plan.estimator_of(gr) for gr in groups]
    wn = next((e for e in ests if e.kind == "forward" and e.perturb == "weights"), None)
    if wn is not None:
        lines.append(f'<FONT POINT-SIZE="8" COLOR="{NOISE}"><B>⚡ W-noise</B> {html(_noise(wn))}</FONT>')
        kw.update(color=NOISE, penwidth="3", **{"class": "w-noise"})
    return _attrs(label=Html("<BR/>".join(lines)), style="filled", tooltip=loss.id, **kw)


def _loss_nodes(v: _View, loss, w, indent: str) -> None:
    if loss.head_nodes:
        w(f"{indent}{quote(f'head:{loss.id}')} {_head_attrs(v, loss)};")
    w(f"{indent}{quote(loss.id)} {_loss_attrs(v, loss)};")


def _loss_attrs(v: _View, loss) -> str:
    trains = v.trains(loss.id)
    probe = v.is_probe(loss.id)
    what = "final loss" if loss.final else f"{loss.name} loss"
    lines = [f"<B>{html(what)} ({html(loss.kind)})</B>"]
    rep = replication_text(loss)
    if rep:
        lines.append(html(rep.replace(" = ", "\n= ")))
    lines.append(_small(trains, "#333333" if not probe else "#777777", 8))
    kind = "final" if loss.final else "local"
    kw = dict(tooltip=loss.id, label=Html("<BR/>".join(lines)), margin="0.02",
              **{"class": f"loss loss-{kind}" + (" loss-probe" if probe else "")})
    if loss.final:
        kw.update(shape="doubleoctagon", style="filled,bold" if not probe else "filled",
                  fillcolor=FINAL_FILL if not probe else LOSS_FILL, color="#880e4f")
    else:
        kw.update(shape="octagon", style="filled" if not probe else "filled,dashed",
                  fillcolor=LOSS_FILL if not probe else OFF_FILL,
                  color="#ad1457" if not probe else OFF)
    return _attrs(**kw)


def _left(text: str) -> Html:
    """A left-aligned multi-line HTML label."""
    return Html("".join(f'{html(line)}<BR ALIGN="LEFT"/>' for line in text.split("\n")))


def _legend(v: _View, w) -> None:
    g = v.g
    plan = v.plan
    w("  subgraph cluster_legend {")
    w(f"    graph {_attrs(label=Html('<B>Legend</B>'), style='rounded', color='#bbbbbb', bgcolor='white', fontsize='11', labeljust='l', margin='8')};")
    # parameter groups
    rows = ['<TR><TD COLSPAN="5" ALIGN="LEFT"><B>parameter groups</B> (fill colour)</TD></TR>']
    for name, grp in plan.groups.items():
        members = [n for n, gr in plan.assignment.items() if gr == name]
        n_params = sum(g.node(n).num_params for n in members)
        est = describe_estimator(plan.estimator_of(name))
        extra = []
        if grp.optimizer is not None:
            kws = ", ".join(f"{k}={x}" for k, x in grp.optimizer.kwargs)
            extra.append(f"{grp.optimizer.name}({kws})")
        if grp.weight_decay is not None:
            extra.append(f"wd {grp.weight_decay:g}")
        rows.append(
            f'<TR><TD BGCOLOR="{v.colors[name]}" WIDTH="18"> </TD>'
            f'<TD ALIGN="LEFT"><B>{html(name)}</B></TD>'
            f'<TD ALIGN="LEFT">{html(est)}</TD>'
            f'<TD ALIGN="LEFT">lr ×{grp.lr_scale:g}{html("  " + ", ".join(extra)) if extra else ""}</TD>'
            f'<TD ALIGN="RIGHT">{_count(n_params)} params</TD></TR>')
    table = ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="2">'
             + "".join(rows) + "</TABLE>")
    w(f"    legend_groups {_attrs(label=Html(table), shape='plaintext', style='', fillcolor='white')};")
    chain = ["legend_groups"]

    # node shapes: only those in the picture; a small sample, then what it means
    sites = [n for n in g.g if g.node(n).kind == "perturb"]
    live = [v.site_noise(n) for n in sites]
    items = []
    on = next((e for e in live if e is not None), None)
    if on is not None:
        items.append(("site_on", dict(label="⚡", shape="diamond", style="filled",
                                      fillcolor=NOISE_FILL, color=NOISE, penwidth="2"),
                      f"perturbation site: activity noise ({_noise(on)}) enters here"))
    if any(e is None for e in live):
        items.append(("site_off", dict(label="", shape="diamond", style="dashed,filled",
                                       fillcolor=OFF_FILL, color=OFF),
                      "perturbation site, inactive under this algorithm"
                      + (" or dead (its noise reaches no loss)" if any(v.site_dead(n) for n in sites) else "")))
    wn = next((v.weight_noise(n) for n in plan.assignment if v.weight_noise(n)), None)
    if wn is not None:
        items.append(("wnoise", dict(label="⚡ W-noise", color=NOISE, penwidth="3",
                                     fontcolor=NOISE),
                      f"layer whose weights are perturbed ({_noise(wn)})"))
    items.append(("op", dict(label=Html("<B>op args</B><BR/>" + _small("shape · params")),
                             fillcolor=PALETTE[0]),
                  "layer: op + key arguments, output shape (where it changes),\n"
                  "parameters; filled with its parameter group's colour"))
    probes = {l.id: v.is_probe(l.id) for l in g.losses.values()}
    if any(l.head_nodes for l in g.losses.values()):
        items.append(("head", dict(label="a → b → c", style="filled"),
                      "a loss head, its ops in one node"))
    if any(not l.final and not probes[l.id] for l in g.losses.values()):
        items.append(("loss", dict(label="loss", shape="octagon", style="filled",
                                   fillcolor=LOSS_FILL, color="#ad1457"),
                      "local loss: its replication and what its gradient trains"))
    if any(probes[l.id] for l in g.losses.values() if not l.final):
        items.append(("probe", dict(label="loss", shape="octagon", style="filled,dashed",
                                    fillcolor=OFF_FILL, color=OFF),
                      "loss that trains its head only (the backbone ignores it)"))
    finals = [l for l in g.losses.values() if l.final]
    if finals:
        probe = probes[finals[0].id]
        items.append(("final", dict(label="loss", shape="doubleoctagon",
                                    style="filled" if probe else "filled,bold",
                                    fillcolor=LOSS_FILL if probe else FINAL_FILL, color="#880e4f"),
                      "final loss, on the network output" +
                      ("; here it trains its readout head only" if probe else "")))
    for key, at, desc in items:
        a, b = f"legend_{key}", f"legend_{key}_text"
        w(f"    {a} {_attrs(fontsize='9', margin='0.04,0.02', height='0.3', **at)};")
        w(f"    {b} {_attrs(label=_left(desc), shape='plaintext', style='', fontsize='9')};")
        w(f"    {{ rank=same; {a}; {b}; }}")
        w(f"    {a} -> {b} [style=invis];")
        chain.append(a)

    # edge styles: only those in the picture
    whys = {g.edge(a, b).why or "spec" for a, b in g.g.edges if g.edge(a, b).stop_gradient}
    edges = [("flow", _attrs(), "data flow"),
             ("next", _attrs(color="#37474f", penwidth="1.4"),
              "block output → next block (next column)")]
    for why in ("greedy", "readout", "spec"):
        if why in whys:
            style, text, desc = STOP_STYLE[why]
            edges.append((why, _attrs(color=STOP, fontcolor=STOP, style=style, penwidth="1.8",
                                      arrowhead="teenormal", arrowsize="0.8", label=text), desc))
    if len(v.blocks) < 2:
        edges = [e for e in edges if e[0] != "next"]
    for key, at, desc in edges:
        a, b = f"legend_{key}_a", f"legend_{key}_b"
        w(f"    {a} {_attrs(label='', shape='point', width='0.05', style='filled', fillcolor='black')};")
        w(f"    {b} {_attrs(label=_left(desc), shape='plaintext', style='', fontsize='9')};")
        w(f"    {{ rank=same; {a}; {b}; }}")
        w(f"    {a} -> {b} {at[:-1] + ', minlen=3]' if at else '[minlen=3]'};")
        chain.append(a)
    w(f"    {' -> '.join(chain)} [style=invis];")
    w("  }")


