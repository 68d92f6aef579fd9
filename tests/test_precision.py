"""Mixed precision (`train.precision`, `--precision`): bfloat16 products with float32 sums
next to the float32 step, the setting through the language, the CLI, `fgc bench` and
`fgc verify` (which always runs in float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgc
from fgc.front.fmt import format_spec
from fgc.front.parse import parse
from fgc.lowering.modules import PRECISIONS, make_layer, with_precision
from fgc.tools.cli import build_parser, main
from fgc.training.data import synthetic_dataset
from fgc.training.train import make_step, prepare
from specs import guess_blocks, local_mixer

CONV = """
spec "tiny conv"
input x = image(8, 8, 1), classes = 4

block b(width) {
  out in | conv(width, kernel = 3, stride = 2) | groupnorm(groups = 2) | perturb | relu
}

head aux = conv(4, kernel = 1) | global_avgpool | linear(classes)
head readout = global_avgpool | linear(classes)

network {
  out x | b(4) | b(4)
}

loss local = aux on blocks
loss final = readout on output
"""

LAYERS = [("dense", {"out": 16}, [(24,)], (5, 24)),
          ("group_linear", {"out": 16, "groups": 4}, [(24,)], (5, 24)),
          ("token_mix", {}, [(6, 8)], (5, 6, 8)),
          ("conv", {"out": 8, "kernel": 3, "stride": 1, "padding": "same"}, [(6, 6, 3)],
           (5, 6, 6, 3))]


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside it (a ``custom_jvp``'s body)."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            inner = getattr(v, "jaxpr", v)
            if isinstance(inner, jax.extend.core.Jaxpr):
                yield from _equations(inner)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("kind,attrs,shapes,x_shape", LAYERS, ids=[l[0] for l in LAYERS])
def test_bfloat16_layer_is_close_to_float32_and_returns_float32(kind, attrs, shapes, x_shape):
    """bfloat16 keeps 8 significant bits: a product of sums of ~24 terms is within ~1% of
    the float32 one; the output, the weights and their gradient stay float32."""
    layer = make_layer(kind, attrs, shapes, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), x_shape)

    @eqx.filter_jit
    def value_and_grad(m):
        return m(x), jax.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m)

    exact, g_exact = value_and_grad(with_precision(layer, "float32"))
    for precision in PRECISIONS:
        low = with_precision(layer, precision)
        y, g = value_and_grad(low)
        assert y.dtype == jnp.float32 and low.weight.dtype == jnp.float32
        assert _rel(y, exact) < (2e-2 if precision == "bfloat16" else 1e-6)
        assert g.weight.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g.weight)))
        assert _rel(g.weight, g_exact.weight) < (3e-2 if precision == "bfloat16" else 1e-5)


@pytest.mark.parametrize("kind,attrs,shapes,x_shape", LAYERS, ids=[l[0] for l in LAYERS])
def test_the_accelerator_path_takes_bfloat16_operands_and_sums_in_float32(
        kind, attrs, shapes, x_shape, monkeypatch):
    """Off CPU the product itself is bfloat16 × bfloat16 → float32 (on CPU fgc emulates
    it, as XLA:CPU lacks some of these dots): traced as a GPU would run it, the forward
    product takes bfloat16 operands and returns float32, and its gradient and JVP trace."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    layer = with_precision(make_layer(kind, attrs, shapes, key=jax.random.key(0)), "bfloat16")
    x = jnp.ones(x_shape)
    forward = jax.make_jaxpr(layer)(x)
    products = [e for e in _equations(forward.jaxpr)
                if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert len(products) == 1
    assert [v.aval.dtype for v in products[0].invars] == [jnp.bfloat16] * 2
    assert products[0].outvars[0].aval.dtype == jnp.float32
    jax.make_jaxpr(jax.grad(lambda m, x: jnp.sum(m(x)), argnums=(0, 1)))(layer, x)
    jax.make_jaxpr(lambda x: jax.jvp(layer, (x,), (x,)))(x)


def test_default_precision_is_the_old_layer_bit_for_bit():
    """`default` changes nothing: the same products as before precision existed."""
    for kind, attrs, shapes, x_shape in LAYERS:
        layer = make_layer(kind, attrs, shapes, key=jax.random.key(0))
        assert layer.precision == "default"
        x = jax.random.normal(jax.random.key(1), x_shape)
        if kind == "dense":
            np.testing.assert_array_equal(layer(x), x @ layer.weight + layer.bias[None])


def test_with_precision_names_the_choices():
    layer = make_layer("dense", {"out": 2}, [(3,)], key=jax.random.key(0))
    with pytest.raises(ValueError, match="default, float32, bfloat16"):
        with_precision(layer, "fp16")


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_train=64, n_test=16, image_shape=(8, 8, 1), num_classes=4)


def _spec(tmp_path, text, precision="bfloat16"):
    p = tmp_path / "s.fg"
    p.write_text(text + f"\ntrain {{\n  batch_size = 16\n  precision = {precision}\n}}\n")
    return p


def test_network_forward_in_bfloat16_is_close_to_float32(tmp_path, data):
    """The same parameters (same seed) in both precisions: every loss of the bfloat16
    forward within 2% of the float32 one; parameters stay float32."""
    spec = _spec(tmp_path, local_mixer("bf16", zero_readout=False))
    low, high = prepare(spec, dataset=data), prepare(spec, dataset=data, precision="float32")
    assert low.train.precision == "bfloat16"
    assert low.net.layers["stem.1/dense.0"].precision == "bfloat16"
    assert high.net.layers["stem.1/dense.0"].precision == "float32"
    dtypes = {a.dtype for a in jax.tree.leaves(low.net) if eqx_array(a)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    x, y = jnp.asarray(data.x_train[:16]), jnp.asarray(data.y_train[:16])
    a, b = low.net.forward(x, y), high.net.forward(x, y)
    for k in b.losses:
        np.testing.assert_allclose(jnp.mean(a.losses[k]), jnp.mean(b.losses[k]), rtol=2e-2)
        assert a.losses[k].dtype == jnp.float32
    np.testing.assert_allclose(low.net(x), high.net(x), atol=5e-2)


def eqx_array(a):
    return isinstance(a, jax.Array)


# One of each rule family runs by default (backprop heads in all of them); the rest slow.
FAMILIES = [("mixer", "lg-fg-a"), ("mixer", "dfa"), ("conv", "lg-fg-w"), ("guess", "guess-local-a")]
MORE = [("mixer", a) for a in ("bp", "lg-bp", "fg-w", "fa")] + \
    [("conv", a) for a in ("lg-bp", "lg-fg-a", "lg-fa")] + [("guess", "guess-random-w")]


@pytest.mark.parametrize("spec_kind,algorithm", FAMILIES + [
    pytest.param(*m, marks=pytest.mark.slow) for m in MORE],
    ids=[f"{s}-{a}" for s, a in FAMILIES + MORE])
def test_a_bfloat16_step_runs_under_every_rule_family(tmp_path, data, spec_kind, algorithm):
    """Backprop, forward gradients (weights and activity), feedback alignment (FA, DFA)
    and gradient guesses each make finite float32 updates with bfloat16 products; the
    optimizer state stays float32."""
    text = {"mixer": local_mixer("bf16"), "conv": CONV,
            "guess": guess_blocks(blocks=2)}[spec_kind]
    d = synthetic_dataset(n_train=32, n_test=8, image_shape=(6,), num_classes=3) \
        if spec_kind == "guess" else data
    run = prepare(_spec(tmp_path, text), dataset=d, algorithm=algorithm)
    step = make_step(run.rule, run.tx, max_traces=1)
    net, opt = run.init_state()
    for i in range(2):
        x, y = jnp.asarray(d.x_train[i * 16:(i + 1) * 16]), jnp.asarray(d.y_train[i * 16:(i + 1) * 16])
        net, opt, losses = step(net, opt, x, y, jax.random.key(i))
    assert all(np.isfinite(float(v)) for v in losses.values())
    leaves = [a for a in jax.tree.leaves((net, opt)) if eqx_array(a)
              and jnp.issubdtype(a.dtype, jnp.floating)]
    assert leaves and all(a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
                          for a in leaves)


TINY = ('spec "p"\n\ninput x = vector(4), classes = 2\n\nhead readout = linear(classes)\n\n'
        'network {\n  out x | dense(4)\n}\n\nloss final = readout on output\n\n'
        'train {\n  precision = bfloat16\n}\n')


def test_precision_round_trips_through_fmt_and_overrides():
    text = TINY
    assert format_spec(parse(text, "p.fg")) == text
    assert fgc.loads(text, "p.fg").train.precision == "bfloat16"
    assert fgc.loads(text.replace("bfloat16", "float32"), "p.fg").train.precision == "float32"
    assert fgc.loads(text.replace("  precision = bfloat16\n", ""), "p.fg").train.precision \
        == "default"


def test_precision_through_set(tmp_path):
    from fgc.errors import SpecError
    from fgc.front.overrides import load
    spec = tmp_path / "p.fg"
    spec.write_text(TINY)
    assert load(spec, ["train.precision=float32"]).train.precision == "float32"
    with pytest.raises(SpecError, match="precision must be one of default, float32, bfloat16"):
        load(spec, ["train.precision=fp16"])


def test_precision_flag_on_train_and_bench():
    p = build_parser()
    assert p.parse_args(["train", "s.fg", "--out", "o", "--precision", "bfloat16"]).precision \
        == "bfloat16"
    assert p.parse_args(["bench", "s.fg", "--precision", "float32"]).precision == "float32"
    assert p.parse_args(["train", "s.fg", "--out", "o"]).precision is None  # the spec's
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "s.fg", "--precision", "fp16"])


def test_bench_reports_its_precision(tmp_path):
    from fgc.tools.bench import bench_spec, format_report
    spec = tmp_path / "s.fg"
    spec.write_text(TINY.replace("bfloat16", "float32"))  # the flag wins over the spec
    result = bench_spec(spec, ["bp"], batch_size=8, steps=2, warmup=0, replicated=False,
                        precision="bfloat16")
    assert result["precision"] == "bfloat16" and result["algorithms"][0]["losses_finite"]
    assert "precision bfloat16" in format_report(result).splitlines()[0]


def test_verify_ignores_precision_and_says_so(tmp_path, capsys):
    """A bfloat16 spec verifies in float64 at full precision, and the user is told."""
    spec = tmp_path / "s.fg"
    spec.write_text(TINY)
    assert main(["verify", str(spec), "--algorithm", "bp", "--samples", "10"]) == 0
    err = capsys.readouterr().err
    assert "train.precision = bfloat16 is not used" in err and "float64" in err


def test_resume_under_another_precision_is_refused(tmp_path):
    from fgc.errors import FgError
    from fgc.training.train import train
    spec = tmp_path / "s.fg"
    spec.write_text(TINY)
    vectors = synthetic_dataset(n_train=32, n_test=8, image_shape=(4,), num_classes=2)
    train(spec, out=tmp_path / "run", dataset=vectors, steps=1, batch_size=16,
          log=lambda _: None, progress=False, eval_train=False)
    with pytest.raises(FgError, match="precision: 'bfloat16' → the default"):
        train(spec, out=tmp_path / "run", dataset=vectors, resume=True, precision="default",
              batch_size=16, log=lambda _: None, progress=False, eval_train=False)
