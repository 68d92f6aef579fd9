"""The train step's compiled memory with and without block-wise execution, compile only.

    python examples/blockwise_memory.py specs/resnet18-k8.fg --algorithms bp,lg-bp

XLA's memory analysis of each algorithm's whole jitted train step (estimate + optax update,
buffers donated), measured exactly as ``fgc bench`` measures it (arguments + outputs +
scratch, donated buffers counted once), but without running a step: for specs whose steps
take minutes on a CPU. Greedy algorithms are compiled twice, running their pieces one
after another (``UpdateRule.build(plan)``, the default) and the whole network at once
(``blockwise=False``); ``fgc bench --blockwise on|off`` gives the same figures with timings.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

from fgc.learning.estimators import UpdateRule
from fgc.tools.bench.measure import _synthetic
from fgc.tools.bench.xla import _lower_compile, _memory
from fgc.tools.common import load_program
from fgc.training.train import make_step, prepare


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--algorithms", default="bp,lg-bp,lg-fg-a,lg-fg-w")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    prog = load_program(args.spec)
    data = _synthetic(prog, args.batch_size, 0)
    x, y = jnp.asarray(data.x_train[:args.batch_size]), jnp.asarray(data.y_train[:args.batch_size])
    rows = []
    for name in args.algorithms.split(","):
        run = prepare(prog, algorithm=name, dataset=data, batch_size=args.batch_size, seed=0)
        rules = {"on": run.rule}
        if run.rule.pieces > 1:
            rules["off"] = UpdateRule.build(run.plan, run.net, blockwise=False)
        for mode, rule in rules.items():
            net, opt_state = run.init_state()
            compiled, _, _ = _lower_compile(make_step(rule, run.tx), net, opt_state, x, y, run.key)
            mib = _memory(compiled)["footprint_bytes"] / 2**20
            rows.append((name, mode if rule.pieces > 1 or mode == "off" else "-", rule.pieces, mib))
            print(f"{name:10s} block-wise {rows[-1][1]:3s}  pieces {rule.pieces:2d}  {mib:9.1f} MiB",
                  flush=True)
    bp = next((m for n, _, _, m in rows if n == "bp"), None)
    if bp:
        print("× BP: " + ", ".join(f"{n} {mode} {m / bp:.2f}" for n, mode, _, m in rows))


if __name__ == "__main__":
    main()
