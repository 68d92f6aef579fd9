"""Compile a spec and train it from Python, step by step.

    python examples/train_mnist.py --algorithm lg-fg-a --epochs 1 --data-dir ../shared/data

`fgc train` does the same with metrics files, checkpoints and resume; this script
shows the pieces it is made of, for research code that wants its own loop. The
trained network is an ordinary Equinox module: call it, jit it, serialise it.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp

from fgc.training.data import iterate_batches
from fgc.training.train import evaluate, make_step, prepare


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="specs/mixer-m-1-16.fg")
    ap.add_argument("--algorithm", default="lg-fg-a")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-dir", default=None, help="folder with mnist.npz (else $FGC_DATA_DIR)")
    ap.add_argument("--save", default="trained.eqx")
    a = ap.parse_args()

    # Spec → checked graph → plan for the algorithm → Equinox network + update rule + optax.
    run = prepare(a.spec, algorithm=a.algorithm, dataset="mnist", data_dir=a.data_dir,
                  epochs=a.epochs)
    step = make_step(run.rule, run.tx)  # one jit-compiled function: estimate + update
    net, opt_state = run.init_state()
    print("\n".join(run.rule.describe()))

    n = 0
    for epoch in range(a.epochs):
        for x, y in iterate_batches(run.data.x_train, run.data.y_train, run.train.batch_size,
                                    seed=run.train.seed, epoch=epoch, shuffle=True,
                                    drop_last=True):
            n += 1
            net, opt_state, losses = step(net, opt_state, jnp.asarray(x), jnp.asarray(y),
                                          jax.random.fold_in(run.key, n))
        err = evaluate(net, run.data.x_test, run.data.y_test)
        print(f"epoch {epoch + 1}: test error {err:.2f}%  "
              + "  ".join(f"{k.removeprefix('loss:')} {float(v):.3f}" for k, v in losses.items()))

    # The network takes raw uint8 images and normalises them itself.
    logits = net(jnp.asarray(run.data.x_test[:8]))
    print("predictions:", logits.argmax(-1).tolist(), "labels:", run.data.y_test[:8].tolist())
    eqx.tree_serialise_leaves(a.save, net)
    print(f"saved {a.save}")


if __name__ == "__main__":
    main()
