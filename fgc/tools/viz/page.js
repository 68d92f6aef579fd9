// fgc viz page: pan/zoom, click a node for its facts, switch the algorithm.
// Everything it shows was computed by fgc (fgc/tools/viz/page.py) into #fgc-data.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("fgc-data").textContent);
  const canvas = document.getElementById("canvas");
  const panel = document.getElementById("panel");
  const menu = document.getElementById("algorithm");
  const summary = document.getElementById("summary");
  const hint = panel.innerHTML;
  let current = null, selected = null, svg = null, box = null;

  for (const name of data.order) {
    const opt = document.createElement("option");
    const view = data.views[name];
    opt.value = name;
    opt.textContent = view.error ? name + " (cannot run here)" : name;
    opt.disabled = !!view.error;
    if (view.error) opt.title = view.error;
    menu.appendChild(opt);
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function nodeId(g) {
    if (g.dataset.id) return g.dataset.id;
    const t = g.querySelector("title");
    return t ? t.textContent : null;
  }

  function nodes() {
    return Array.from(canvas.querySelectorAll("g.node"));
  }

  function show(name) {
    current = name;
    menu.value = name;
    const view = data.views[name];
    summary.textContent = view.summary + (view.drawing === "fgc" ? " · drawn without Graphviz" : "");
    canvas.innerHTML = view.svg;
    svg = canvas.querySelector("svg");
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    const vb = svg.viewBox.baseVal;
    box = {x: vb.x, y: vb.y, w: vb.width, h: vb.height};
    fit();
    if (selected && view.nodes[selected]) select(selected); else clear();
  }

  function fit() {
    if (!svg) return;
    setBox(box.x, box.y, box.w, box.h);
  }

  function setBox(x, y, w, h) {
    svg.setAttribute("viewBox", [x, y, w, h].join(" "));
  }

  function viewBox() {
    const v = svg.viewBox.baseVal;
    return {x: v.x, y: v.y, w: v.width, h: v.height};
  }

  function zoom(k, cx, cy) {
    const v = viewBox();
    const r = svg.getBoundingClientRect();
    const s = Math.max(v.w / r.width, v.h / r.height);
    // the point under (cx, cy) stays put
    const px = v.x + (cx - r.left - (r.width - v.w / s) / 2) * s;
    const py = v.y + (cy - r.top - (r.height - v.h / s) / 2) * s;
    setBox(px - (px - v.x) * k, py - (py - v.y) * k, v.w * k, v.h * k);
  }

  function clear() {
    selected = null;
    panel.innerHTML = hint;
    for (const g of nodes()) g.classList.remove("selected", "reached");
  }

  function select(id) {
    const info = data.views[current].nodes[id];
    if (!info) return;
    selected = id;
    const reach = new Set((info.losses || []).map((l) => "loss:" + l));
    for (const g of nodes()) {
      const n = nodeId(g);
      g.classList.toggle("selected", n === id);
      g.classList.toggle("reached", n !== id && reach.has(n));
    }
    panel.innerHTML = "";
    panel.appendChild(el("h2", info.id));
    const dl = el("dl");
    function row(label, value, key) {
      if (value === undefined || value === null || (Array.isArray(value) && !value.length)) return;
      const dd = el("dd");
      dd.dataset.key = key;
      if (Array.isArray(value)) {
        const ul = el("ul");
        for (const v of value) ul.appendChild(el("li", v));
        dd.appendChild(ul);
      } else {
        dd.textContent = value;
      }
      dl.appendChild(el("dt", label));
      dl.appendChild(dd);
    }
    row("op", info.op, "op");
    row("block", info.block, "block");
    row("shape", info.shape, "shape");
    row("parameters", info.num_params ? info.params.concat(
      [info.num_params.toLocaleString("en") + " in all"]) : "none", "params");
    if (info.group) {
      row("group", info.group, "group");
      const sw = el("span", "", "swatch");
      sw.style.background = info.color;
      dl.lastChild.prepend(sw);
    }
    row("update rule", info.rule, "rule");
    row("site", info.site, "site");
    row(info.credit_rule ? "credit (" + info.credit_rule + ")" : "credit", info.credit, "credit");
    row("losses reached", info.losses && info.losses.length ? info.losses : (info.role === "op" ? "none" : undefined), "losses");
    row("trains", info.trains, "trains");
    row("stop-gradient", info.stops, "stops");
    row("spec", info.span, "span");
    panel.appendChild(dl);
  }

  menu.addEventListener("change", () => show(menu.value));
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("zoom-in").addEventListener("click", () => {
    const r = svg.getBoundingClientRect();
    zoom(1 / 1.25, r.left + r.width / 2, r.top + r.height / 2);
  });
  document.getElementById("zoom-out").addEventListener("click", () => {
    const r = svg.getBoundingClientRect();
    zoom(1.25, r.left + r.width / 2, r.top + r.height / 2);
  });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    zoom(ev.deltaY < 0 ? 1 / 1.15 : 1.15, ev.clientX, ev.clientY);
  }, {passive: false});

  let drag = null;
  canvas.addEventListener("mousedown", (ev) => {
    drag = {x: ev.clientX, y: ev.clientY, moved: false};
    canvas.classList.add("dragging");
  });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (!drag.moved) return;
    const v = viewBox();
    const r = svg.getBoundingClientRect();
    const s = Math.max(v.w / r.width, v.h / r.height);
    setBox(v.x - dx * s, v.y - dy * s, v.w, v.h);
    drag.x = ev.clientX;
    drag.y = ev.clientY;
  });
  window.addEventListener("mouseup", () => {
    canvas.classList.remove("dragging");
    setTimeout(() => { drag = null; }, 0);
  });
  canvas.addEventListener("click", (ev) => {
    if (drag && drag.moved) return;
    const g = ev.target.closest("g.node");
    const id = g && nodeId(g);
    if (id && data.views[current].nodes[id]) select(id); else clear();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") clear();
  });

  show(data.selected);
  window.fgcPage = {data, show, select, current: () => current};
})();
