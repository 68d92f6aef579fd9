# The share of a profiled train step spent drawing tangent noise: the fusions whose body
# holds threefry's integer rounds (xor / shifts), found in the compiled HLO, timed from the
# trace that `fgc bench --profile DIR` wrote for the same spec and algorithm; then the
# step's biggest operations with what they hold.
# Usage: fgc bench specs/mixer-m-8-16.fg --algorithms lg-fg-a --steps 5 --no-replicated --profile DIR
#        python docs/benchmarks/noise-and-memory/sampling_share.py specs/mixer-m-8-16.fg lg-fg-a DIR/lg-fg-a [TOP]
import sys, os, re, gzip, json, glob, collections
sys.path.insert(0, os.path.dirname(__file__))
from compile_step import compiled_step
from fgc.tools.bench.xla import _xla
spec, algo, tracedir = sys.argv[1], sys.argv[2], sys.argv[3]
txt = _xla(compiled_step(spec, algo)).as_text()
comps, cur = {}, None
for line in txt.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
    if line and not line.startswith(" ") and "{" in line and m:
        cur = m.group(1); comps[cur] = []
    elif cur:
        comps[cur].append(line)
def calls(body):
    out = []
    for l in body:
        out += re.findall(r"calls=%?([\w.\-]+)", l)
        out += re.findall(r"to_apply=%?([\w.\-]+)", l)
    return out
def has_rng(comp, seen=()):
    body = comps.get(comp, [])
    if any(re.search(r" (xor|shift-right-logical|shift-left)\(", l) for l in body):
        return True
    return any(has_rng(c2, seen + (comp,)) for c2 in calls(body) if c2 not in seen)
rng_ops = set()
for comp, body in comps.items():
    for l in body:
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? (fusion|call|while)\(", l)
        if m and any(has_rng(c2) for c2 in calls([l])):
            rng_ops.add(m.group(1))
trace = sorted(glob.glob(f"{tracedir}/plugins/profile/*/*.trace.json.gz"))[-1]
ev = json.load(gzip.open(trace, "rt"))["traceEvents"]
spans = [e for e in ev if e.get("ph") == "X" and "dur" in e]
steps = [(e["ts"], e["ts"] + e["dur"]) for e in spans if e["name"] == "fgc train step"]
# XLA's operations of the entry computation (not Python frames, not the runtime's spans)
top = {m.group(1) for l in txt.splitlines() for m in [re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = ", l)] if m}
tot = collections.Counter()
for e in spans:
    if any(a <= e["ts"] and e["ts"] + e["dur"] <= b for a, b in steps) and e["name"] in top:
        tot["rng" if e["name"] in rng_ops else "rest"] += e["dur"]
n = len(steps)
step_ms = sum(b - a for a, b in steps) / n / 1e3
print(f"{algo}: {n} steps of {step_ms:.1f} ms; noise-drawing fusions ({len(rng_ops)}): "
      f"{tot['rng']/n/1e3:.1f} ms/step; XLA's other operations {tot['rest']/n/1e3:.1f} ms/step "
      f"(both summed over threads; a while loop's time includes its body's)")
# the biggest ops and what they hold
per = collections.Counter(); cnt = collections.Counter()
for e in spans:
    if any(a <= e["ts"] and e["ts"] + e["dur"] <= b for a, b in steps) and "::" not in e["name"]:
        per[e["name"]] += e["dur"]; cnt[e["name"]] += 1
for name, us in [kv for kv in per.most_common() if kv[0] in top][:int(sys.argv[4]) if len(sys.argv) > 4 else 12]:
    line = next((l for b in comps.values() for l in b if re.match(rf"\s*(?:ROOT )?%?{re.escape(name)} = ", l)), "")
    sub = calls([line])
    body = comps.get(sub[0], []) if sub else []
    opsin = collections.Counter(re.findall(r"= \S+ ([\w\-]+)\(", "\n".join(body)))
    print(f"{us/n/1e3:8.1f} ms x{cnt[name]//n} {name}: {line.strip()[:160]}\n      body ops: {dict(opsin.most_common(8))}")
