"""`fgc bench`'s output: aligned plain-text tables and the JSON file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fgc.tools.bench.base import BenchError
from fgc.tools.bench.profile import format_ceilings, format_profile
from fgc.tools.common import write_whole


def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_report(result: dict[str, Any]) -> str:
    """The measurements of :func:`bench_spec` as an aligned plain-text report."""
    d = result["device"]
    title = result.get("spec_name")
    lines = [f"fgc bench: {title + ' · ' if title else ''}{result['spec']} · batch "
             f"{result['batch_size']} · median of {result['steps']} steps after "
             f"{result['warmup']} warm-up · precision {result.get('precision', 'default')} · "
             f"{d['kind']} ({d['platform']}"
             f"{', ' + str(d['host_cpus']) + ' host CPUs' if d['platform'] == 'cpu' else ''})"
             f" · jax {result['jax']}"]
    rows = result["algorithms"]
    have_bp = any("ratios_to_bp" in r for r in rows)
    peak = any(r.get("device_peak_bytes") for r in rows)
    header = ["algorithm", "pieces", "compile s", "step ms", "IQR ms", "images/s", "mem MiB",
              "GFLOP/step", "GFLOP/s"]
    if peak:
        header.insert(7, "peak MiB")
    if have_bp:
        header += ["time ×BP", "mem ×BP", "FLOP ×BP"]
    body = []
    for r in rows:
        s = r["step_seconds"]
        cells = [r["algorithm"], _fmt(r.get("pieces"), "d"), _fmt(r["compile_seconds"], ".1f"),
                 _fmt(s["median"] * 1e3, ".2f"),
                 _fmt(s["iqr"] * 1e3, ".2f"), _fmt(r["images_per_second"], ",.0f"),
                 _fmt(r["footprint_bytes"] and r["footprint_bytes"] / 2**20, ".1f"),
                 _fmt(r["flops"] and r["flops"] / 1e9, ".3f"),
                 _fmt(r["flops_per_second"] and r["flops_per_second"] / 1e9, ".1f")]
        if peak:
            cells.insert(7, _fmt(r.get("device_peak_bytes") and r["device_peak_bytes"] / 2**20,
                                 ".0f"))
        if have_bp:
            q = r["ratios_to_bp"]
            cells += [_fmt(q["step_seconds"], ".2f"), _fmt(q["footprint_bytes"], ".2f"),
                      _fmt(q["flops"], ".2f")]
        body.append(cells)
    lines += _table(header, body)
    notes = ["mem = the compiled step's arguments + outputs + XLA scratch (donated buffers "
             "counted once); GFLOP from XLA's cost analysis",
             "pieces = parts of the network the step runs one after another (block-wise "
             + ("on" if result.get("blockwise", True) else "off: --blockwise off") + ")"]
    chosen = {}
    for r in rows:
        for k, v in (r.get("xla_options") or {}).items():
            chosen.setdefault(f"{k}={v}", []).append(r["algorithm"])
    for option, names in chosen.items():
        notes.append(f"{', '.join(names)}: compiled with {option}, which needed less memory "
                     "than XLA's default schedule (as fgc train does; docs/training.md)")
    if peak:
        notes.append("peak = the device's high-water mark so far in this process "
                     "(it only grows from one row to the next)")
    if not have_bp:
        notes.append("no ×BP columns: bp was not among the algorithms")
    bad = [r["algorithm"] for r in rows if not r.get("losses_finite", True)]
    if bad:
        notes.append(f"non-finite losses after the timed steps: {', '.join(bad)}")
    for name, why in result.get("skipped", {}).items():
        notes.append(f"{name} not run: {why}")
    lines += [f"  {n}" for n in notes]

    if result.get("ceilings"):
        lines += ["", format_ceilings(result["ceilings"])]
    for r in rows:
        if r.get("profile"):
            lines += [""] + format_profile(r["algorithm"], r["profile"], result.get("ceilings"))

    rep = result.get("replicated") or {}
    if "skipped" in rep:
        lines += ["", f"replicated loss, fused vs naive: skipped: {rep['skipped']}"]
    for cfg in rep.get("configs", []):
        lines += ["", format_replicated(cfg)]
    return "\n".join(lines)


def format_replicated(cfg: dict[str, Any]) -> str:
    """One fused-vs-naive comparison of :func:`compare_replicated` as an aligned table."""
    lines = [_replicated_title(cfg)]
    header = ["", "JVP ms", "JVP MiB", "VJP ms", "VJP MiB"]
    body = []
    for version in ("fused", "naive"):
        cells = [version]
        for mode in ("jvp", "vjp"):
            e = cfg[f"{version}_{mode}"]
            t = e.get("seconds")
            cells += [_fmt(t and t["median"] * 1e3, ".2f", "not run"),
                      _fmt(e.get("footprint_bytes") and e["footprint_bytes"] / 2**20, ".1f")]
        body.append(cells)
    cells = ["naive/fused"]
    for mode in ("jvp", "vjp"):
        q = cfg[f"naive_over_fused_{mode}"]
        cells += [_fmt(q.get("time"), ".1f") + ("×" if q.get("time") else ""),
                  _fmt(q.get("footprint"), ".1f") + ("×" if q.get("footprint") else "")]
    body.append(cells)
    lines += _table(header, body)
    for mode in ("jvp", "vjp"):
        why = cfg[f"naive_{mode}"].get("skipped")
        if why:
            lines.append(f"  naive {mode.upper()}: {why}")
    return "\n".join(lines)


def _replicated_title(cfg: dict[str, Any]) -> str:
    losses = cfg.get("losses") or []
    which = ", ".join(f"`{l.removeprefix('loss:')}`" for l in losses[:4]) + \
        (f" and {len(losses) - 4} more" if len(losses) > 4 else "")
    return (f"replicated loss{' ' + which if which else ''}: B={cfg['batch']} P={cfg['patches']} "
            f"C={cfg['channels']} G={cfg['groups']} K={cfg['classes']} "
            f"({cfg['replicas_per_example']:,} replica"
            f"{'' if cfg['replicas_per_example'] == 1 else 's'} per example), fused vs naive "
            f"(a tangent on the block output; VJP = gradient of the mean loss)")


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Writes the result as JSON, whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    _check_writable(path)
    write_whole(path, json.dumps(result, indent=2) + "\n", BenchError)
    return path


def _check_writable(path: Path) -> None:
    if not path.parent.is_dir():
        raise BenchError(f"cannot write `{path}`: folder `{path.parent}` does not exist "
                         f"(create it with `mkdir -p {path.parent}`)")
    if path.is_dir():
        raise BenchError(f"cannot write `{path}`: it is a folder; give a file name such as "
                         f"`{path / 'bench.json'}`")

