"""`--set KEY=VALUE`: overrides of the train, algorithm and group sections, checked like the
spec's own settings and reported at the override."""

import pytest

from fgc.errors import SpecError
from fgc.front.config import presets
from fgc.front.overrides import ALGORITHM_KEYS, GROUP_KEYS, TRAIN_KEYS, apply
from fgc.front.parse import parse
from fgc.tools.cli import build_parser, main

SPEC = "specs/mixer-m-1-16.fg"

MINE = """
input x = image(8, 8, 1), classes = 4
block stem(width) {
  out in | dense(width) | layernorm | perturb | relu
}
head h = mean(patches) | linear(classes)
network { out x | patchify(2) | stem(8) }
loss local = h on blocks
loss final = h on output
algorithm mine {
  target = local
  greedy = false
  estimator = forward(perturb = activity)
}
group late {
  params = stem
  lr_scale = 2
}
"""


def load(sets, text=None):
    if text is None:
        with open(SPEC, encoding="utf-8") as f:
            text = f.read()
    return apply(parse(text, "spec.fg"), sets)


def error(sets, text=None) -> str:
    with pytest.raises(SpecError) as e:
        load(sets, text)
    return str(e.value)


def test_train_settings_and_nested_call_arguments():
    prog = load(["train.epochs=3", "train.optimizer.learning_rate=0.05", "train.seed=7",
                 "train.schedule=cosine(warmup_epochs = 1)", 'train.dataset="data/x.npz"'])
    t = prog.train
    assert (t.epochs, t.seed, t.dataset) == (3, 7, "data/x.npz")
    assert t.optimizer.as_dict() == {"learning_rate": 0.05, "momentum": 0.9}  # momentum kept
    assert t.schedule.name == "cosine"
    # later overrides win; a nested key starts from the default call when the spec has none
    prog = load(["train.optimizer=adam(learning_rate = 0.1)", "train.optimizer.b1=0.8"])
    assert prog.train.optimizer.name == "adam"
    assert prog.train.optimizer.as_dict() == {"learning_rate": 0.1, "b1": 0.8}
    prog = load(["train.optimizer.learning_rate=0.5"], MINE)
    assert prog.train.optimizer.as_dict() == {"learning_rate": 0.5, "momentum": 0.9}


def test_presets_default_groups_and_spec_sections():
    prog = load(["algorithm.lg-fg-a.estimator.tangents=4", "group.heads.lr_scale=0.5",
                 "group.readout.weight_decay=0"])
    assert prog.algorithms["lg-fg-a"].estimator.tangents == 4
    assert presets()["lg-fg-a"].estimator.tangents == 1  # the shipped preset is untouched
    plan = prog.plan("lg-fg-a")
    assert plan.groups["heads"].lr_scale == 0.5
    assert plan.groups["readout"].lr_scale == 0.1 and plan.groups["readout"].weight_decay == 0
    assert set(plan.assignment.values()) == {"backbone", "heads", "readout"}
    prog = load(["algorithm.mine.greedy=true", "group.late.lr_scale=3"], MINE)
    assert prog.algorithms["mine"].greedy and prog.groups[0].lr_scale == 3


def test_overrides_change_the_source_hash_but_not_the_spec_lines():
    plain, over = load([]), load(["train.epochs=3"])
    assert over.spec.source.startswith(plain.spec.source.rstrip("\n"))
    assert over.spec.source.endswith("# --set train.epochs=3\n")


@pytest.mark.parametrize("sets,needles", [
    (["train.epoch=3"], ["--set train.epoch=3: error[E203]: unknown train setting `epoch`",
                         "did you mean `epochs`?", "train settings: dataset, batch_size"]),
    (["train.epochs=0"], ["--set train.epochs=0: error[E206]: epochs must be a positive",
                          "# --set train.epochs=0\n", "^"]),
    (["train.optimizer.learnin_rate=1"], ["optax.sgd has no argument `learnin_rate`",
                                          "did you mean `learning_rate`?"]),
    (["algorithm.lg-fg-x.greedy=true"], ["no algorithm `lg-fg-x`", "did you mean `lg-fg-w`?"]),
    (["algorithm.lg-fg-a.greedy=maybe"], ["greedy must be true or false"]),
    (["algorithm.lg-fg-a.target=lokal"], ["target must be one of local, global",
                                          "did you mean `local`?"]),
    (["algorithm.bp.estimator.tangents=2"], ["`estimator` has no call of its own"]),
    (["group.head.lr_scale=2"], ["no parameter group `head`", "did you mean `heads`?"]),
    (["group.heads.lr_scal=2"], ["unknown group setting `lr_scal`", "did you mean `lr_scale`?"]),
    (["group.heads.lr_scale=-1"], ["lr_scale must be a number ≥ 0"]),
    (["trian.epochs=1"], ["unknown section `trian`", "did you mean `train`?"]),
    (["train.epochs"], ["not KEY=VALUE"]),
    (["train.epochs=(3"], ["unexpected end of the value"]),
    (["train.epochs=3 } train { seed = 1"], ["VALUE must be one value"]),
    (["train.algorithm=lg-fg-x"], ["unknown algorithm `lg-fg-x`"]),
    (["algorithm.bp=1"], ["an algorithm key is algorithm.NAME.KEY"]),
])
def test_errors_name_the_override(sets, needles):
    text = error(sets)
    for needle in needles:
        assert needle in text, text
    assert "Traceback" not in text


def test_every_error_at_once_each_at_its_own_line():
    text = error(["train.epochs=0", "train.seed=-1"])
    assert "--set train.epochs=0:" in text and "--set train.seed=-1:" in text
    assert "2 errors" in text


def test_key_lists_are_what_the_sections_accept():
    assert "unknown train setting" in error(['train.bogus="?"'])
    for key in TRAIN_KEYS:  # each is a setting the train section accepts
        assert "unknown train setting" not in error([f"train.{key}=\"?\""])
    for key in ALGORITHM_KEYS:  # each is a setting an algorithm accepts
        assert "unknown algorithm setting" not in error([f"algorithm.bp.{key}=\"?\""])
    for key in GROUP_KEYS:
        assert "unknown group setting" not in error([f"group.heads.{key}=\"?\""])


def test_cli_train_bench_diagnose_take_set(capsys):
    p = build_parser()
    for cmd in (["train", SPEC, "--out", "x"], ["bench", SPEC], ["diagnose", SPEC, "-o", "x"]):
        args = p.parse_args(cmd + ["--set", "train.epochs=2", "--set", "train.seed=1"])
        assert args.set == ["train.epochs=2", "train.seed=1"]
    assert main(["train", SPEC, "--out", "/nonexistent/x", "--set", "train.epoch=3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("--set train.epoch=3: error[E203]") and "Traceback" not in err


def test_set_a_constant_rebuilds_the_network_and_picks_heads():
    from pathlib import Path
    from fgc.front.overrides import load
    base = Path(__file__).resolve().parents[1] / "specs" / "resnet18-k8.fg"
    small = load(base, ["const.W=2", "const.AUX=linear_aux"])
    heads = {small.graph.node(n).kind for n in small.graph.g if small.graph.node(n).role == "head"}
    assert "conv" not in heads and "adaptive_avgpool" in heads
    assert small.graph.node("stem.1/conv.0").shape == (32, 32, 2)
    for sets, code, message in ((["const.WW=2"], "E201", "no constant `WW`"),
                                (["const.W.x=2"], "E204", "const.NAME"),
                                (["const.AUX=mlpaux"], "E201", "unknown head `mlpaux`")):
        with pytest.raises(SpecError) as e:
            load(base, sets)
        assert e.value.diagnostics[0].code == code and message in e.value.diagnostics[0].message
