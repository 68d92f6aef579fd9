# The buffers live at the high-water mark of XLA's sequential schedule of a compiled step,
# read from the live-range dump (sizes from the optimised HLO's shapes). Make the dump with
#   XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=-reduce --xla_dump_to=DIR --xla_dump_hlo_as_text" \
#     python docs/benchmarks/noise-and-memory/compile_step.py specs/mixer-m-8-16.fg lg-fg-a default
# then: python docs/benchmarks/noise-and-memory/live_at_peak.py DIR/module_*.jit_step.cpu_after_optimizations-live-range.txt
import re, sys, collections, math
f = sys.argv[1]
lines = open(f).read().splitlines()
seq = {}
i = 2
while lines[i].startswith("    ") and ":" in lines[i]:
    k, name = lines[i].strip().split(":", 1); seq[int(k)] = name; i += 1
ranges = []
for l in lines:
    m = re.match(r"\s+(\S+)\{(.*?)\}:(\d+)-(\d+)", l) or re.match(r"\s+(\S+):(\d+)-(\d+)", l)
    if m and len(m.groups()) == 4:
        ranges.append((m.group(1) + "{" + m.group(2) + "}", int(m.group(3)), int(m.group(4))))
    elif m:
        ranges.append((m.group(1), int(m.group(2)), int(m.group(3))))
hlo = open(f.replace("-live-range.txt", ".txt")).read()
shape_of = {}
for m in re.finditer(r"%([\w.\-]+) = (\([^=]*?\)|\w+\[[\d,]*\])", hlo):
    shape_of.setdefault(m.group(1), m.group(2))
def size(name):
    base, _, idx = name.partition("{")
    s = shape_of.get(base, "")
    parts = re.findall(r"(\w+)\[([\d,]*)\]", s)
    if not parts: return 0
    if idx.strip("}") and s.startswith("("):
        j = int(idx.strip("}").split(",")[0]); parts = parts[j:j+1] if j < len(parts) else []
    elif s.startswith("("): return 0  # a tuple's own index table
    tot = 0
    for dt, dims in parts:
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        tot += n * {"f32": 4, "u32": 4, "s32": 4, "pred": 1, "f64": 8, "u8": 1, "bf16": 2}.get(dt, 4)
    return tot
T = max(e for _, _, e in ranges) + 1
live = [0] * T
for n, s, e in ranges:
    z = size(n)
    for t in range(s, e + 1): live[t] += z
peak = max(range(T), key=lambda t: live[t])
print(f"peak {live[peak]/2**20:.1f} MiB at {peak} ({seq.get(peak)})")
big = sorted(((size(n), n, s, e) for n, s, e in ranges if s <= peak <= e), reverse=True)
for z, n, s, e in big[:40]:
    if z >= 2**20: print(f"  {z/2**20:6.1f} MiB {n} [{s}-{e}] {seq.get(s)} .. {seq.get(e)}")
# profile over time, coarse
for t in range(0, T, max(1, T // 40)):
    print(t, f"{live[t]/2**20:.0f}", seq.get(t, "")[:50])
