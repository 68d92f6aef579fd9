# fgc's M/8/16 step with token_mix contracted in the patch-major layout ("einsum", before)
# and the channels-major one ("swapped", now), compiled and timed alternated in one process.
# Usage (REN_HOME: the side-by-side harness folder, ../shared/bench/ren-side-by-side/):
#   REN_HOME=... FGC_CHECKOUT=/work/main python3 variant.py m816 bp 10
import os, sys, re, collections, time
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-reduce")
sys.path.insert(0, "/work/ren")
import harness as H
import jax, jax.numpy as jnp
from fgc.lowering import modules as M
caught = {}
orig = H.xla_figures
def grab(compiled):
    caught["c"] = compiled
    return orig(compiled)
H.xla_figures = grab
def patch_major(self, x):  # fgc's token_mix before the change: contract in [B, P, C]
    (x, w), kw = M._operands(self.precision, x, self.weight)
    y = jnp.einsum("nqc,qp->npc", x, w, **kw)
    return y if self.bias is None else y + M._lead(self.bias[:, None], y)
def swapped(self, x):
    (x, w), kw = M._operands(self.precision, x, self.weight)
    y = jnp.swapaxes(jnp.einsum("ncq,qp->ncp", jnp.swapaxes(x, 1, 2), w, **kw), 1, 2)
    return y if self.bias is None else y + M._lead(self.bias[:, None], y)
net, algo = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 0
runs = {}
for name, call in (("einsum", patch_major), ("swapped", swapped)):
    M.TokenMix.__call__ = call
    run_one, info, _ = H.build_fgc(net, algo)
    txt = caught["c"].as_text(); 
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", txt))
    print(name, {k: ops[k] for k in ("copy", "transpose", "dot", "fusion")}, "bytes", info["bytes_accessed"], "temp", info["memory"])
    runs[name] = run_one
if rounds:
    import statistics
    for r in runs.values():
        r(); r()
    t = {k: [] for k in runs}
    for i in range(rounds):
        for k, r in (list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]):
            t[k].append(r()[0])
    a, b = t["einsum"], t["swapped"]
    ratios = sorted(y / x for x, y in zip(a, b))
    print("median s einsum", statistics.median(a), "swapped", statistics.median(b),
          "paired swapped/einsum median", statistics.median(ratios), "range", ratios[0], ratios[-1])
