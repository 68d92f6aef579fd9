"""Augmentations of the training batches (`train { augment = [crop(pad = 4), flip] }`):
vectorised jax functions from a registry, seeded, validated with located diagnostics,
applied inside the step and never to evaluation data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgc.errors import SpecError
from fgc.plan.program import loads
from fgc.training import augment

IMAGES = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)


def test_deterministic_given_the_key_and_different_across_keys():
    f = augment.make((("crop", (("pad", 4),)), ("flip", ())))
    x = jnp.asarray(IMAGES)
    a, b = f(x, jax.random.key(3)), f(x, jax.random.key(3))
    assert np.array_equal(a, b) and a.dtype == x.dtype and a.shape == x.shape
    assert not np.array_equal(a, f(x, jax.random.key(4)))


def test_crop_is_a_shift_within_pad_filled_with_zeros():
    pad = 4
    out = np.asarray(augment.make((("crop", (("pad", pad),)),))(jnp.asarray(IMAGES), jax.random.key(0)))
    shifts = set()
    for img, got in zip(IMAGES, out):
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if np.array_equal(padded[dy:dy + 8, dx:dx + 8], got)]
        assert matches, "every crop is a window of the zero-padded image"
        shifts.add(matches[0])
        assert all(abs(dy - pad) <= pad and abs(dx - pad) <= pad for dy, dx in matches)
    assert len(shifts) > 1  # per example, not one shift for the batch


def test_flip_mirrors_left_right_per_example():
    out = np.asarray(augment.make((("flip", ()),))(jnp.asarray(IMAGES), jax.random.key(1)))
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, IMAGES)]
    kept = [np.array_equal(o, i) for o, i in zip(out, IMAGES)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_it_is_vectorised_one_program_for_the_batch():
    f = jax.jit(augment.make((("crop", (("pad", 2),)), ("flip", ()))))
    jaxpr = jax.make_jaxpr(f)(jnp.asarray(IMAGES), jax.random.key(0))
    assert len(str(jaxpr)) < 20_000  # no per-image unrolling: 16 images, one program


SPEC = """\
input x = image(8, 8, 3), classes = 2
head readout = global_avgpool | linear(classes)
network {
  out x | conv(4) | relu
}
loss final = readout on output
train {
  augment = AUG
}
"""


def test_the_train_section_reads_the_list():
    prog = loads(SPEC.replace("AUG", "[crop(pad = 2), flip]"))
    assert prog.train.augment == (("crop", (("pad", 2),)), ("flip", ()))
    assert loads(SPEC.replace("AUG", "flip")).train.augment == (("flip", ()),)


@pytest.mark.parametrize("aug,code,col_of", [
    ("[crop(pad = 4), flipp]", "E207", "flipp"),
    ("[crop(padding = 4)]", "E203", "crop"),
    ("[crop(pad = -1)]", "E206", "crop"),
    ("[crop(pad = 1.5)]", "E206", "crop"),
    ("[crop(4)]", "E205", "crop"),
    ("[flip(p = 1)]", "E203", "flip"),
    ("[3]", "E206", "3"),
])
def test_bad_augmentations_are_located(aug, code, col_of):
    src = SPEC.replace("AUG", aug)
    with pytest.raises(SpecError) as e:
        loads(src, "bad.fg")
    (d,) = e.value.diagnostics
    line = src.splitlines()[d.span.line - 1]
    assert d.code == code and line[d.span.column - 1:].startswith(col_of), str(e.value)


def test_training_augments_and_evaluation_does_not(tmp_path, monkeypatch):
    """The step trains on augmented batches (a run with augmentation ends elsewhere than
    one without), and evaluation gets the stored test and training images untouched."""
    import fgc.training.train as T
    from fgc.training.data import synthetic_dataset
    data = synthetic_dataset("t", n_train=16, n_test=8, image_shape=(8, 8, 3), num_classes=2,
                             seed=0)
    seen = []
    real = T.evaluate

    def spy(net, x, y, batch_size=1000):
        seen.append(x)
        return real(net, x, y, batch_size)

    monkeypatch.setattr(T, "evaluate", spy)
    losses = {}
    for name, aug in (("plain", "[]"), ("aug", "[crop(pad = 4), flip]")):
        s = T.train(loads(SPEC.replace("AUG", aug)), out=tmp_path / name, dataset=data,
                    batch_size=8, epochs=1, progress=False, log=lambda *_: None)
        losses[name] = s["train_loss"]
    assert losses["plain"] != losses["aug"]
    assert seen and all(x is data.x_test or x is data.x_train for x in seen)


def test_decay_on_all_reaches_biases_and_norm_parameters():
    """[F]'s recipe decays every parameter (torch's SGD); fgc's default only weights."""
    import equinox as eqx
    import optax
    from fgc.lowering.lower import lower, trainable
    from fgc.training.train import make_optimizer
    src = SPEC.replace("conv(4) | relu", "conv(4) | batchnorm | relu").replace(
        "augment = AUG", "weight_decay = 0.5\n  optimizer = sgd(learning_rate = 1.0)\n"
                         "  schedule = constant\n  decay_on = DECAY")
    for decay_on in ("weights", "all"):
        prog = loads(src.replace("DECAY", decay_on))
        plan = prog.plan()
        net = lower(plan, jax.random.key(0))
        params = eqx.filter(net, trainable(net))
        tx, _ = make_optimizer(plan, prog.train, 1)
        zero = jax.tree_util.tree_map(jnp.zeros_like, params)
        upd, _ = tx.update(zero, tx.init(params), params)
        scale = upd.layers["net/batchnorm.1"].scale  # -lr · wd · scale with zero gradient
        weight = upd.layers["net/conv.0"].weight
        np.testing.assert_allclose(weight, -0.5 * params.layers["net/conv.0"].weight, rtol=1e-6)
        want = -0.5 * np.ones(4) if decay_on == "all" else np.zeros(4)
        np.testing.assert_allclose(scale, want, rtol=1e-6)
    with pytest.raises(SpecError) as e:
        loads(src.replace("DECAY", "biases"))
    assert e.value.diagnostics[0].code == "E207"
