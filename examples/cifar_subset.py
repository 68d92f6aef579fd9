"""Writes a seeded subset of CIFAR-10 as a user dataset (.npz) for short CPU runs.

    python examples/cifar_subset.py --train 2048 --test 2000 -o /tmp/cifar/cifar10-2048.npz

The training images are the first N of a permutation (seed 0) of the 50,000, the test
images the first M of a permutation (seed 1) of the 10,000, so classes stay roughly
balanced and the subset is the same on every machine. BENCHMARKS.md's short CIFAR runs
train on these files (`fgc train SPEC --dataset FILE.npz`).
"""

import argparse

import numpy as np

from fgc.training.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, required=True, help="training images")
    ap.add_argument("--test", type=int, default=2000, help="test images")
    ap.add_argument("--data-dir", default=None, help="folder holding cifar10-jpeg.zip")
    ap.add_argument("-o", "--out", required=True, help="the .npz to write")
    a = ap.parse_args()
    d = load_dataset("cifar10", a.data_dir)
    tr = np.random.default_rng(0).permutation(len(d.x_train))[:a.train]
    te = np.random.default_rng(1).permutation(len(d.x_test))[:a.test]
    np.savez(a.out, x_train=d.x_train[tr], y_train=d.y_train[tr],
             x_test=d.x_test[te], y_test=d.y_test[te])
    print(f"{a.out}: {len(tr)} train, {len(te)} test images; train classes "
          f"{np.bincount(d.y_train[tr], minlength=10).tolist()}")


if __name__ == "__main__":
    main()
