"""The ops ResNet-18 needed: `adaptive_avgpool` and integer `padding` of `conv`, each
against a naive numpy reference (loops over windows), with their shape rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgc.graph.ops import OPS, ShapeError
from fgc.lowering.modules import make_layer



@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _adaptive_reference(x, size):
    """PyTorch's AdaptiveAvgPool2d, written out: bin i covers floor(i·H/s) .. ceil((i+1)·H/s)."""
    b, h, w, c = x.shape
    out = np.zeros((b, size, size, c))
    for i in range(size):
        r0, r1 = (i * h) // size, -(-(i + 1) * h // size)
        for j in range(size):
            c0, c1 = (j * w) // size, -(-(j + 1) * w // size)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("hw,size", [((8, 8), 2), ((7, 5), 3), ((1, 1), 2), ((4, 4), 4), ((3, 2), 2)])
def test_adaptive_avgpool_matches_the_naive_bins(hw, size):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3))
    layer = make_layer("adaptive_avgpool", {"size": size}, [(*hw, 3)], key=jax.random.key(0))
    got = np.asarray(layer(jnp.asarray(x)))
    np.testing.assert_allclose(got, _adaptive_reference(x, size), rtol=1e-12, atol=1e-12)
    assert OPS["adaptive_avgpool"].infer([(*hw, 3)], {"size": size}) == (size, size, 3)


def test_adaptive_avgpool_shape_rules():
    assert OPS["adaptive_avgpool"].mixes == ("positions",)
    with pytest.raises(ShapeError):
        OPS["adaptive_avgpool"].infer([(8,)], {"size": 2})
    with pytest.raises(ShapeError) as e:
        OPS["adaptive_avgpool"].infer([(4, 4, 2)], {"size": 0})
    assert e.value.code == "E303"


def _conv_reference(x, w, stride, pad):
    """Cross-correlation with `pad` zeros on every side, as torch.nn.Conv2d(padding=pad)."""
    b, h, wd, c = x.shape
    k, _, _, o = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((b, oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


@pytest.mark.parametrize("hw,k,stride,pad", [((8, 8), 3, 1, 1), ((8, 8), 3, 2, 1), ((7, 7), 3, 2, 1),
                                              ((8, 8), 1, 2, 0), ((2, 2), 3, 2, 1), ((5, 5), 3, 1, 2)])
def test_conv_with_integer_padding_matches_pytorch_convention(hw, k, stride, pad):
    attrs = {"out": 4, "kernel": k, "stride": stride, "padding": pad, "bias": False, "init": "default"}
    layer = make_layer("conv", attrs, [(*hw, 3)], key=jax.random.key(1), dtype=jnp.float64)
    x = np.random.default_rng(1).normal(size=(2, *hw, 3))
    got = np.asarray(layer(jnp.asarray(x)))
    want = _conv_reference(x, np.asarray(layer.weight), stride, pad)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert OPS["conv"].infer([(*hw, 3)], attrs) == want.shape[1:]


def test_conv_padding_words_and_errors():
    from fgc.plan.program import loads
    from fgc.errors import SpecError
    base = ("input x = image(8, 8, 1), classes = 2\nhead r = global_avgpool | linear(classes)\n"
            "network {{\n  out x | conv(4, padding = {p}) | relu\n}}\nloss final = r on output\n")
    assert loads(base.format(p="same")).graph.node("net/conv.0").shape == (8, 8, 4)
    assert loads(base.format(p="valid")).graph.node("net/conv.0").shape == (6, 6, 4)
    assert loads(base.format(p=2)).graph.node("net/conv.0").shape == (10, 10, 4)
    for bad, code in (("-1", "E303"), ("full", "E207"), ("1.5", "E206")):
        with pytest.raises(SpecError) as e:
            loads(base.format(p=bad))
        assert [d.code for d in e.value.diagnostics] == [code], (bad, str(e.value))
