"""One epoch of LocalMixer S/1/1 on the real MNIST (from ../shared/data or
$FGC_DATA_DIR; skipped when absent), trained through the public API.

The spec's hyperparameters are the paper's for 1000 epochs; for a one-epoch budget
the learning rate stays constant (the linear decay would reach zero within the
epoch) and LG-FG-A averages 16 tangents per step (the released code's
``num_passes``): with one tangent its readout, which learns at lr × 0.1 from a
zero start, is still near 20% after one epoch although the blocks' local losses
fall steadily. BENCHMARKS.md has the 20-epoch runs at the paper's settings.
"""

import dataclasses
import os
from pathlib import Path

import pytest

from fgc.front.config import Call
from fgc.training.data import load_dataset
from fgc.training.train import train

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FGC_DATA_DIR", ROOT.parent / "shared" / "data"))
SPEC = ROOT / "specs" / "mixer-s-1-1.fg"

pytestmark = pytest.mark.skipif(not (DATA / "mnist.npz").is_file(),
                                reason=f"real MNIST not found at {DATA / 'mnist.npz'}")


def _epoch(algorithm, tangents, out, dataset="mnist"):
    return train(SPEC, out=out, algorithm=algorithm, dataset=dataset, data_dir=DATA, epochs=1,
                 tangents=tangents, schedule=Call("constant"), eval_train=False,
                 progress=False, log=lambda _: None)


@pytest.mark.parametrize("algorithm,tangents", [
    ("bp", None), pytest.param("lg-fg-a", 16, marks=pytest.mark.slow)])
def test_one_epoch_of_s11_on_mnist(algorithm, tangents, tmp_path):
    summary = _epoch(algorithm, tangents, tmp_path / algorithm)
    assert summary["epochs"] == 1
    assert summary["test_error"] < 10.0, summary


def test_lg_fg_a_learns_from_a_sixth_of_mnist(tmp_path):
    # The fast sibling of the slow full epoch above (80 s on 2 cores): 10,000 training and
    # 2,000 test images, 8 tangents; measured 25.7% test error (chance is 90%).
    ds = load_dataset("mnist", DATA)
    ds = dataclasses.replace(ds, x_train=ds.x_train[:10000], y_train=ds.y_train[:10000],
                             x_test=ds.x_test[:2000], y_test=ds.y_test[:2000])
    summary = _epoch("lg-fg-a", 8, tmp_path / "lg-fg-a", dataset=ds)
    assert summary["test_error"] < 40.0, summary
