"""What each XLA operation of a compiled step is, read from its optimised HLO, so that a
profile's time can be split by kind and set against the device's ceilings.

A trace names operations (``ynn_fusion.16``, ``dot.7``, ``copy_transpose_fusion.2``) but not
what they compute. :func:`classify` reads the compiled module's text once and gives every
executed instruction a kind, the FLOPs of its matrix products and the bytes of its operands
and result:

- ``matmul``: a dot or convolution, alone or inside a fusion (its FLOPs: 2 per multiply-add);
- ``layout``: a copy or transpose, or a fusion of nothing else (data moved, nothing computed);
- ``reduce``: a fusion that reduces (sums, maxima: norms, losses, batch means);
- ``elementwise``: every other fusion (activations, their tangents, noise, optimizer updates);
- ``control``: loops, calls and conditionals, whose time is that of the operations inside,
  so a profile leaves them out of its sums.

Bytes are operands plus result as XLA sees them: what an operation would move if nothing
stayed in cache, an upper bound of its memory traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence
from math import prod

KINDS = ("matmul", "layout", "reduce", "elementwise", "control")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
          "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\((.*)\)\s*->\s*(.*)\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_PARAM = re.compile(r"([\w.\-]+):\s*((?:\([^)]*\))|(?:[a-z0-9]+\[[0-9,]*\]))")
_CONTROL = {"while", "call", "conditional", "async-start", "async-done"}
# what a control op runs: attribute names that hold computations
_CALLED = ("body", "condition", "to_apply", "calls", "branch_computations",
           "true_computation", "false_computation")
_PRODUCTS = {"dot", "convolution"}
_REDUCE = {"reduce", "reduce-window", "scatter", "sort"}
_LAYOUT = {"copy", "transpose"}
_FREE = {"parameter", "bitcast", "reshape", "get-tuple-element", "tuple", "constant",
         "broadcast"}


@dataclass(frozen=True)
class Op:
    kind: str
    flops: float  # of its matrix products; 0 for the rest
    bytes: int    # operands + result


@dataclass
class _Instr:
    name: str
    type: str
    opcode: str
    operands: list[str]
    attrs: str


def _type_bytes(text: str) -> int:
    return sum(_BYTES.get(dt, 4) * prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _ARRAY.findall(text))


def _dims(text: str) -> list[int]:
    m = _ARRAY.search(text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_call(rest: str) -> tuple[list[str], str]:
    """The operand names of ``opcode(...)`` and the attributes after its closing bracket."""
    depth, i = 1, 0
    while i < len(rest) and depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    return re.findall(r"%([\w.\-]+)", rest[: i - 1]), rest[i:]


def _computations(text: str) -> tuple[dict[str, list[_Instr]], dict[str, dict[str, str]], str]:
    """Every computation's instructions, the types of its names, and the entry's name."""
    comps: dict[str, list[_Instr]] = {}
    types: dict[str, dict[str, str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h:
            current = h.group(2)
            comps[current], types[current] = [], dict(_PARAM.findall(h.group(3)))
            entry = current if h.group(1) else entry
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            operands, attrs = _split_call(m.group(4))
            comps[current].append(_Instr(m.group(1), m.group(2), m.group(3), operands, attrs))
            types[current][m.group(1)] = m.group(2)
    return comps, types, entry


def _called(attrs: str, key: str) -> list[str]:
    m = re.search(key + r"=\{?([%\w.\-, ]+)\}?", attrs)
    return re.findall(r"%([\w.\-]+)", m.group(1)) if m else []


def _product_flops(ins: _Instr, types: dict[str, str]) -> float:
    out = prod(_dims(ins.type))
    if ins.opcode == "dot":
        lhs = _dims(types.get(ins.operands[0], ""))
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
        k = prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m and lhs else 1
        return 2.0 * out * k
    # convolution: each output element sums kernel / output-features products
    kernel = _dims(types.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
    labels = re.search(r"dim_labels=\w+_(\w+)->", ins.attrs)
    if not kernel or not labels or "o" not in labels.group(1):
        return 0.0
    taps = prod(kernel) / kernel[labels.group(1).index("o")]
    # An input dilated by d (the filter gradient of a grouped or strided convolution) puts
    # d - 1 holes between its values: of a window of s taps only ceil(s / d) meet one.
    window = re.search(r"window=\{size=([0-9x]+)[^}]*?lhs_dilate=([0-9x]+)", ins.attrs)
    if window:
        for size, d in zip(window.group(1).split("x"), window.group(2).split("x")):
            taps *= -(-int(size) // int(d)) / int(size)
    return 2.0 * out * taps


def _fused_kind(body: list[_Instr], types: dict[str, str]) -> tuple[str, float]:
    ops = {i.opcode for i in body}
    products = [i for i in body if i.opcode in _PRODUCTS]
    if products:
        return "matmul", sum(_product_flops(i, types) for i in products)
    if ops - _FREE <= _LAYOUT:
        return "layout", 0.0
    if ops & _REDUCE:
        return "reduce", 0.0
    return "elementwise", 0.0


def classify(hlo_text: str) -> dict[str, Op]:
    """Every executed instruction of an optimised HLO module (``compiled.as_text()``):
    the entry's and those of the loops, calls and conditionals it runs, by name."""
    comps, types, entry = _computations(hlo_text)
    out: dict[str, Op] = {}
    todo, seen = [entry], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        t = types[name]
        for ins in comps[name]:
            if ins.opcode in _FREE:
                continue
            moved = _type_bytes(ins.type) + sum(_type_bytes(t.get(o, "")) for o in ins.operands)
            if ins.opcode in _CONTROL:
                todo += [c for key in _CALLED for c in _called(ins.attrs, key)]
                out[ins.name] = Op("control", 0.0, 0)
            elif ins.opcode == "fusion":
                sub = _called(ins.attrs, "calls")
                body = comps.get(sub[0], []) if sub else []
                kind, flops = _fused_kind(body, types.get(sub[0], {}) if sub else {})
                out[ins.name] = Op(kind, flops, moved)
            elif ins.opcode in _PRODUCTS:
                out[ins.name] = Op("matmul", _product_flops(ins, t), moved)
            elif ins.opcode in _LAYOUT:
                out[ins.name] = Op("layout", 0.0, moved)
            elif ins.opcode in _REDUCE:
                out[ins.name] = Op("reduce", 0.0, moved)
            else:
                out[ins.name] = Op("elementwise", 0.0, moved)
    return out


def by_kind(times_us: dict[str, Sequence[float]], ops: dict[str, Op],
            steps: int) -> dict[str, dict[str, float]]:
    """Per kind and per step: the time its operations ran (``ms``, summed over threads),
    their FLOPs and bytes, and the rates those make. ``times_us`` maps an operation's name
    to (total microseconds, count) over ``steps`` profiled steps; names the module does
    not know (the runtime's own spans) fall under ``other``."""
    rows: dict[str, dict[str, float]] = {}
    for name, (us, count) in times_us.items():
        op = ops.get(name)
        kind = op.kind if op else "other"
        if kind == "control":
            continue
        r = rows.setdefault(kind, {"ms": 0.0, "ops": 0.0, "gflop": 0.0, "gbyte": 0.0})
        r["ms"] += us / steps / 1e3
        r["ops"] += count / steps
        if op:
            r["gflop"] += op.flops * count / steps / 1e9
            r["gbyte"] += op.bytes * count / steps / 1e9
    for r in rows.values():
        s = r["ms"] / 1e3
        r["gflop_per_s"] = r["gflop"] / s if s and r["gflop"] else None
        r["gbyte_per_s"] = r["gbyte"] / s if s and r["gbyte"] else None
    order = {k: i for i, k in enumerate(KINDS + ("other",))}
    return dict(sorted(rows.items(), key=lambda kv: order.get(kv[0], 99)))
