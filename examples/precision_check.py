"""How far bfloat16 products move a step: the losses and every parameter group's update
direction under `precision = bfloat16` against `precision = float32`, same network, batch
and key.

    PYTHONPATH=$PWD python examples/precision_check.py --spec specs/mixer-m-1-16.fg \\
        --algorithms bp,lg-bp,lg-fg-a --batch-size 128 --time 200

With ``--time N`` it also times N train steps of each precision, alternated in one process
(default, float32, bfloat16, default, ...), and prints the median, IQR and ratios to
default. On CPU bfloat16 is emulated (fgc.lowering.modules): its time says nothing of a GPU.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import fgc
from fgc.training.data import synthetic_dataset
from fgc.training.train import prepare


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel()
                           for a in jax.tree.leaves(eqx.filter(tree, eqx.is_array))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="specs/mixer-m-1-16.fg")
    p.add_argument("--algorithms", default="bp,lg-bp,lg-fg-a")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--time", type=int, default=0, metavar="N",
                   help="also time N alternated steps of each precision")
    args = p.parse_args()
    prog = fgc.load(args.spec)
    data = synthetic_dataset(image_shape=tuple(prog.graph.meta["input_shape"]),
                             num_classes=int(prog.graph.meta["classes"]),
                             n_train=args.batch_size, n_test=8)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    print(f"{args.spec} · batch {args.batch_size} · {jax.devices()[0].device_kind} · "
          "bfloat16 against float32 (same parameters, batch, key)")
    for name in args.algorithms.split(","):
        runs = {pr: prepare(prog, algorithm=name, dataset=data, batch_size=args.batch_size,
                            precision=pr) for pr in ("float32", "bfloat16")}
        ests = {pr: eqx.filter_jit(r.rule.estimate)(r.net, x, y, r.key)
                for pr, r in runs.items()}
        lo, hi = ests["bfloat16"], ests["float32"]
        loss_err = max(abs(float(jnp.mean(lo.losses[k])) / float(jnp.mean(hi.losses[k])) - 1)
                       for k in hi.losses)
        g_lo, g_hi = _flat(lo.grads), _flat(hi.grads)
        cos = float(g_lo @ g_hi / (np.linalg.norm(g_lo) * np.linalg.norm(g_hi)))
        rel = float(np.linalg.norm(g_lo - g_hi) / np.linalg.norm(g_hi))
        print(f"  {name:8} losses: max relative change {loss_err:.2e} · update: cosine "
              f"{cos:.6f}, relative L2 difference {rel:.2e} · finite "
              f"{bool(np.all(np.isfinite(g_lo)))}")
        if args.time:
            _time(prog, name, data, args.batch_size, args.time)


def _time(prog, name, data, batch, n) -> None:
    import time

    from fgc.training.train import make_step
    steps, states, times = {}, {}, {}
    for pr in ("default", "float32", "bfloat16"):
        run = prepare(prog, algorithm=name, dataset=data, batch_size=batch, precision=pr)
        steps[pr], states[pr], times[pr] = make_step(run.rule, run.tx), run.init_state(), []
    for i in range(n + 5):
        for pr in steps:
            x, y = jax.device_put((data.x_train, data.y_train))
            key = jax.random.key(i)
            jax.block_until_ready((x, y))
            t = time.perf_counter()
            *state, losses = steps[pr](*states[pr], x, y, key)
            jax.block_until_ready((state, losses))
            states[pr] = state
            if i >= 5:
                times[pr].append(time.perf_counter() - t)
    med = {pr: float(np.median(t)) * 1e3 for pr, t in times.items()}
    for pr, t in times.items():
        q1, q3 = np.percentile(np.asarray(t) * 1e3, [25, 75])
        print(f"    {pr:8} step {med[pr]:8.2f} ms (IQR {q3 - q1:.2f}) · ×default "
              f"{med[pr] / med['default']:.3f}  ({n} steps, alternated)")


if __name__ == "__main__":
    main()
