"""The host side of one train step: how much of it is Python, not XLA.

Three ways to run the same compiled train step, alternated in one process (A, B, C, A, B,
C, ...) so that the machine's other jobs slow all three alike:

  A  the step `fgc train` runs: `make_step` (eqx.filter_jit, everything donated) on
     (net, opt_state, x, y, key);
  B  what the run loop calls now, `fgc.training.flat_step.FlatStep`: a plain `jax.jit`
     over the flat list of the arrays of (net, opt_state), donated (`donate_argnums`),
     the pytree rebuilt inside the traced function only;
  C  B's compiled executable called directly (`jax.jit(...).lower(...).compile()`), the
     floor: no tracing cache, no pytree of modules, only jax's argument checks.

For each call it records the dispatch time (until the call returns) and the step time
(until the outputs are ready), and prints the median, IQR and the ratios B/A, C/A. At
batch 1 the step is almost all host overhead. Then the loop itself, A against B: chunks of
`--loop-steps` steps as `fgc train` runs them (batches from `iterate_batches` through
`prefetch_to_device`, a key folded per step, no wait between steps), alternated, the time
per step of each chunk.

    PYTHONPATH=$PWD python examples/host_overhead.py --spec specs/mixer-m-1-16.fg \\
        --algorithm lg-fg-a --batch-size 128 --steps 300 --json docs/benchmarks/host-overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import equinox as eqx
import jax
import numpy as np

from fgc.training.data import iterate_batches, prefetch_to_device, synthetic_dataset
from fgc.training.flat_step import FlatStep
from fgc.training.train import make_step, prepare, step_body


def _spread(xs):
    a = np.asarray(xs) * 1e3
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3),
            "iqr_ms": float(q3 - q1), "n": len(a)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="specs/mixer-m-1-16.fg")
    p.add_argument("--algorithm", default="lg-fg-a")
    p.add_argument("--batch-size", type=int, nargs="+", default=[128, 1])
    p.add_argument("--steps", type=int, default=300, help="timed steps of each variant")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--loop-steps", type=int, default=20, help="steps per chunk of the loop")
    p.add_argument("--loop-chunks", type=int, default=21, help="chunks of each (the first "
                   "is not timed)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    results = []
    for batch in args.batch_size:
        import fgc
        prog = fgc.load(args.spec)
        data = synthetic_dataset(image_shape=tuple(prog.graph.meta["input_shape"]),
                                 num_classes=int(prog.graph.meta["classes"]),
                                 n_train=2 * batch, n_test=batch)
        run = prepare(prog, algorithm=args.algorithm, dataset=data, batch_size=batch)
        step_a = make_step(run.rule, run.tx)
        net_a, opt_a = run.init_state()
        net_b, opt_b = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a,
                                    run.init_state())
        step_b = FlatStep(step_body(run.rule, run.tx), net_b, opt_b)
        leaves_b = step_b.arrays(net_b, opt_b)
        leaves_c = [a.copy() for a in leaves_b]
        x_host, y_host = data.x_train[:batch], data.y_train[:batch]

        def inputs(i):
            x, y = jax.device_put((x_host, y_host))
            key = jax.random.fold_in(run.key, i + 1)
            jax.block_until_ready((x, y, key))
            return x, y, key

        compiled_c = step_b._jitted.lower(leaves_c, *inputs(-1)).compile()
        times = {v: {"dispatch": [], "step": []} for v in "ABC"}
        state = {"A": (net_a, opt_a), "B": leaves_b, "C": leaves_c}

        def call(v, x, y, key):
            if v == "A":
                net, opt, losses = step_a(*state["A"], x, y, key)
                out = (net, opt)
            elif v == "B":
                out, losses = step_b(state["B"], x, y, key)
            else:
                out, losses = compiled_c(state["C"], x, y, key)
            return out, losses

        for i in range(args.warmup + args.steps):
            for v in "ABC":
                x, y, key = inputs(i)
                t0 = time.perf_counter()
                out, losses = call(v, x, y, key)
                t1 = time.perf_counter()
                jax.block_until_ready((out, losses))
                t2 = time.perf_counter()
                state[v] = out
                if i >= args.warmup:
                    times[v]["dispatch"].append(t1 - t0)
                    times[v]["step"].append(t2 - t0)

        def endless(chunk):  # batches as `fgc train` makes them, epoch after epoch
            for epoch in range(chunk * 10**6, (chunk + 1) * 10**6):
                yield from iterate_batches(data.x_train, data.y_train, batch, seed=0,
                                           epoch=epoch, shuffle=True, drop_last=True)

        loops = {"A": [], "B": []}
        for chunk in range(args.loop_chunks):
            for v in "AB":
                batches = prefetch_to_device(endless(chunk))
                jax.block_until_ready(state[v])
                t0 = time.perf_counter()
                for i in range(args.loop_steps):
                    xb, yb = next(batches)
                    key = jax.random.fold_in(run.key, i + 1)
                    state[v], losses = call(v, xb, yb, key)
                jax.block_until_ready((state[v], losses))
                if chunk:  # the first chunk of each is not timed
                    loops[v].append((time.perf_counter() - t0) / args.loop_steps)
        finals = {}  # the same inputs gave the same state: the last losses agree
        for v in "AB":
            state[v], losses = call(v, *inputs(0))
            finals[v] = float(sum(jax.device_get(l) for l in losses.values()))
        row = {"batch_size": batch, "loop": {v: _spread(t) for v, t in loops.items()},
               "loop_ratio_B_over_A": None, "algorithm": args.algorithm, "spec": args.spec,
               "losses_after": finals,
               **{v: {k: _spread(t) for k, t in times[v].items()} for v in "ABC"}}
        for k in ("dispatch", "step"):
            a = row["A"][k]["median_ms"]
            row[f"{k}_ratio_B_over_A"] = row["B"][k]["median_ms"] / a
            row[f"{k}_ratio_C_over_A"] = row["C"][k]["median_ms"] / a
        row["loop_ratio_B_over_A"] = row["loop"]["B"]["median_ms"] / row["loop"]["A"]["median_ms"]
        results.append(row)
        print(f"{args.spec} · {args.algorithm} · batch {batch} · {args.steps} steps each, "
              f"alternated A/B/C · {jax.devices()[0].device_kind}")
        print(f"  {'':28} {'dispatch ms (IQR)':>20} {'step ms (IQR)':>20}")
        names = {"A": "A eqx.filter_jit (make_step)", "B": "B jax.jit, flat, donated",
                 "C": "C compiled executable"}
        for v in "ABC":
            d, s = row[v]["dispatch"], row[v]["step"]
            print(f"  {names[v]:28} {d['median_ms']:9.3f} ({d['iqr_ms']:6.3f}) "
                  f"{s['median_ms']:12.3f} ({s['iqr_ms']:6.3f})")
        print(f"  B/A: dispatch {row['dispatch_ratio_B_over_A']:.3f}, step "
              f"{row['step_ratio_B_over_A']:.3f}; C/A: dispatch "
              f"{row['dispatch_ratio_C_over_A']:.3f}, step {row['step_ratio_C_over_A']:.3f}")
        la, lb = row["loop"]["A"], row["loop"]["B"]
        print(f"  the loop, ms per step (IQR) over {args.loop_chunks - 1} chunks of "
              f"{args.loop_steps}: A {la['median_ms']:.3f} ({la['iqr_ms']:.3f}), B "
              f"{lb['median_ms']:.3f} ({lb['iqr_ms']:.3f}); B/A {row['loop_ratio_B_over_A']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "host": platform.machine(),
                       "jax": jax.__version__, "equinox": eqx.__version__,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results},
                      f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
