"""`fgc reproduce`: a table's rows trained on a tiny setting, the markdown next to the paper's
numbers, finished rows kept, and the tables that need rules fgc does not have."""

import json

import pytest

from fgc.tools.cli import main
from fgc.tools.reproduce import REN_TABLE3, ReproduceError, reproduce
from fgc.training.data import synthetic_dataset

TINY = """
spec "tiny mixer"
input x = image(8, 8, 1), classes = 4
block stem(width, groups) {
  h = in | dense(width) | layernorm | perturb | relu
  out h | group_linear(width, groups = groups) | layernorm(groups = groups) | perturb | relu
}
head local_head(groups) = layernorm(groups = groups) | mean(patches) | linear(classes)
head readout = mean(patches) | layernorm | linear(classes, init = zeros)
network { out x | patchify(2) | stem(16, 2) }
loss local = local_head(2) on blocks, replicate = [patches, groups], groups = 2
loss final = readout on output
train {
  batch_size = 32
  epochs = 3
  optimizer = sgd(learning_rate = 0.05, momentum = 0.9)
}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("repro")
    spec = d / "tiny.fg"
    spec.write_text(TINY, encoding="utf-8")
    # named mnist: the table's MNIST column, with the paper's numbers beside ours
    data = synthetic_dataset("mnist", n_train=96, n_test=32, num_classes=4)
    return spec, data, d / "out"


def test_ren_table3_on_a_tiny_setting(tiny):
    spec, data, out = tiny
    lines = []
    path = reproduce("ren-table3", out=out, dataset=data, epochs=1, rows=["bp", "lg-fg-a"],
                     spec=spec, log=lines.append)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Ren et al. 2023, Table 3 (supervised, test / train error %): "
                           "MNIST M/1/16")
    assert "1 epochs" in text and "batch 32, sgd(learning_rate = 0.05, momentum = 0.9)" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    for label, algo in (("BP", "bp"), ("LG-FG-A", "lg-fg-a")):
        summary = json.loads((out / algo / "summary.json").read_text())
        ours = f"{summary['test_error']:.2f} | {summary['train_error']:.2f}"
        ref = REN_TABLE3.paper["mnist"][label]
        assert f"| {label} | {algo} | {ours} | {ref[0]:.2f} / {ref[1]:.2f} | 1 |" in rows[label]
    assert "| FA | – | not available | not available | 2.90 / 0.00 |" in rows["FA"]
    assert "not run" in rows["FG-W"]  # not asked for this time
    assert "feedback alignment is not implemented" in text
    assert (out / "curves.png").stat().st_size > 1000
    # again: the finished rows are kept, not retrained
    lines.clear()
    reproduce("ren-table3", out=out, dataset=data, epochs=1, rows=["bp", "lg-fg-a"], spec=spec,
              log=lines.append)
    assert sum("kept the finished run" in line for line in lines) == 2
    assert not any(line.startswith("epoch") for line in lines)
    # other settings in the same folder: refused, not mixed
    with pytest.raises(ReproduceError, match=r"other settings \(epochs: 1 → 2\)"):
        reproduce("ren-table3", out=out, dataset=data, epochs=2, rows=["bp"], spec=spec,
                  log=lines.append)


@pytest.mark.parametrize("argv,needle", [
    (["ren-table4"], "needs a contrastive (SimCLR) local loss"),
    (["fournier-table2"], "needs gradient guesses from local auxiliary nets"),
    (["ren-tabel3"], "did you mean `ren-table3`?"),
    (["ren-table3", "--dataset", "imagenet"], "not `imagenet`"),
    (["ren-table3", "--rows", "fa"], "row FA of ren-table3 is not available"),
    (["ren-table3", "--rows", "lg-fg-x"], "did you mean `lg-fg-"),
])
def test_cli_errors_are_one_line(argv, needle, capsys, tmp_path):
    assert main(["reproduce", *argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
