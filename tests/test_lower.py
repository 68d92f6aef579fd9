"""Lowering: parameter counts and shapes against the graph, init, and a hand-written
LocalMixer as ground truth for values, gradients and where stop-gradients cut."""

import functools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.linalg import block_diag

import fgc
from fgc.graph.loss_kinds import LOSS_KINDS
from fgc.training.data import normalize
from fgc.lowering.lower import DATASET_STATS, Network, count_params, lower, param_labels, weight_mask
from fgc.lowering.modules import LAYERS, init_std, make_layer
from fgc.graph.ops import OPS
from fgc.lowering.replicated import xent
from specs import REPLICATE, local_mixer

SPECS = sorted(Path(__file__).resolve().parent.parent.glob("specs/*.fg"))

# A LocalMixer in miniature: 8×8 images cut into 2×2 patches of 16 pixels, 8 channels in 2 groups,
# a stem block and one mixer block with token mixing and a residual, local losses replicated over
# patches and groups, a zero-initialised readout.
TINY = local_mixer("tiny mixer", classes=3, normalize="mnist")

B, P, C, G, K = 5, 4, 8, 2, 3
STEM_DENSE, STEM_GL = "stem.1/dense.0", "stem.1/group_linear.4"
MIX_TOKEN, MIX_DENSE, MIX_GL = "mixer.1/token_mix.0", "mixer.1/dense.4", "mixer.1/group_linear.8"
HEAD0, HEAD1, READOUT = ("loss:local@stem.1/linear.2", "loss:local@mixer.1/linear.2",
                         "loss:final@output/linear.2")
LOSS0, LOSS1, FINAL = "loss:local@stem.1", "loss:local@mixer.1", "loss:final@output"
STEM = (STEM_DENSE, STEM_GL)
BACKBONE = (STEM_DENSE, STEM_GL, MIX_TOKEN, MIX_DENSE, MIX_GL)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def tiny():
    return fgc.loads(TINY, "tiny.fg")


def tiny_net(tiny, algorithm, seed=0):
    """The tiny mixer in float64, with a random (not zero) readout so gradients reach the backbone."""
    plan = tiny.plan(algorithm)
    net = lower(plan, jax.random.key(seed), dtype=jnp.float64)
    w = 0.3 * jax.random.normal(jax.random.key(99), (C, K), jnp.float64)
    return plan, eqx.tree_at(lambda n: n.layers[READOUT].weight, net, w)


def batch(seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.uniform(kx, (B, 8, 8, 1), jnp.float64),
            jax.random.randint(ky, (B,), 0, K))


# --- the hand-written reference (Ren et al. 2023 §2, plain functions) -----------------------

def ref_params(net: Network) -> dict:
    return {n: {"weight": net.layers[n].weight, "bias": net.layers[n].bias}
            for n in (*BACKBONE, HEAD0, HEAD1, READOUT)}


def ln(x, groups=1, eps=1e-5):
    """LayerNorm without affine, in `groups` groups; textbook two-pass variance."""
    xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    mu = xg.mean(-1, keepdims=True)
    var = jnp.square(xg - mu).mean(-1, keepdims=True)
    return ((xg - mu) / jnp.sqrt(var + eps)).reshape(x.shape)


def reference(p, x, y, *, target, greedy):
    """Per-example losses of the tiny mixer and its readout logits.

    target="global": local heads read stop-gradiented blocks (they still train);
    target="local": the readout reads a stop-gradiented network output.
    greedy: stop-gradient between blocks.
    """
    sg = jax.lax.stop_gradient
    relu = jax.nn.relu
    x = normalize(x, *DATASET_STATS["mnist"])
    patches = jnp.stack([x[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4, :].reshape(B, -1)
                         for i in range(2) for j in range(2)], axis=1)        # [B, 4, 16]

    def lead(b, h):  # explicit broadcasting (the suite raises on implicit rank promotion)
        return b.reshape((1,) * (h.ndim - 1) + (-1,))

    def dense(name, h):
        return h @ p[name]["weight"] + lead(p[name]["bias"], h)

    def group_linear(name, h):
        w = block_diag(*p[name]["weight"])                                    # [C, C]
        return h @ w + lead(p[name]["bias"].reshape(-1), h)

    def token_mix(name, h):
        ht = jnp.swapaxes(h, 1, 2) @ p[name]["weight"]
        return jnp.swapaxes(ht + lead(p[name]["bias"], ht), 1, 2)

    # Block 0: dense, LN, ReLU, group-linear, group-LN, ReLU.
    h = relu(ln(dense(STEM_DENSE, patches)))
    b0 = relu(ln(group_linear(STEM_GL, h), G))
    # Block 1: token mixing, channel mixing, group-linear + residual.
    inp = sg(b0) if greedy else b0
    t = relu(ln(token_mix(MIX_TOKEN, inp)))
    h = relu(ln(dense(MIX_DENSE, t)))
    b1 = relu(ln(group_linear(MIX_GL, h), G) + inp)

    def local(head, block):
        src = sg(block) if target == "global" else block
        return xent(dense(head, ln(src, G).mean(axis=1)), y)

    src = sg(b1) if target == "local" else b1
    logits = dense(READOUT, ln(src.mean(axis=1)))
    return {LOSS0: local(HEAD0, b0), LOSS1: local(HEAD1, b1), FINAL: xent(logits, y)}, logits


ALGOS = {"bp": dict(target="global", greedy=False), "l-bp": dict(target="local", greedy=False),
         "lg-bp": dict(target="local", greedy=True)}


def total(losses: dict, replicas: str = "sum") -> jax.Array:
    """Batch mean of every loss.

    A replicated loss sends each patch and group only its own replica's gradient, so the
    backbone sees the whole loss's gradient when the replicas are summed; every replica
    gives the head's parameters the whole gradient, so they see it when replicas are averaged.
    """
    reduce = jnp.sum if replicas == "sum" else jnp.mean
    return sum(jnp.mean(reduce(v.reshape(v.shape[0], -1), axis=1)) for v in losses.values())


# --- counts, shapes, registry ------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_param_count_and_shapes_match_graph(spec):
    plan = fgc.load(spec).plan()
    g = plan.graph
    net = eqx.filter_eval_shape(lower, plan, jax.random.key(0))  # shapes only: no allocation
    assert count_params(net) == g.num_params()
    for nid, layer in net.layers.items():
        arrays = {k: v.shape for k, v in vars(layer).items() if isinstance(v, jax.ShapeDtypeStruct)}
        assert arrays == g.node(nid).params, nid

    x = jax.ShapeDtypeStruct((2, *g.meta["input_shape"]), jnp.uint8)
    vals = eqx.filter_eval_shape(lambda n, x: n.values(x), net, x)
    for nid, v in vals.items():
        assert v.shape == (2, *g.node(nid).shape), nid
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    out = eqx.filter_eval_shape(lambda n, x, y: n.forward(x, y), net, x, labels)
    for info in g.losses.values():
        want = (2,)
        if info.replicate:
            want = (2, info.patches if "patches" in info.replicate else 1,
                    info.groups if "groups" in info.replicate else 1)
        assert out.losses[info.id].shape == want, info.id
        head_out = g.node(info.head_nodes[-1]).shape if info.head_nodes else None
        width = g.meta["classes"] if LOSS_KINDS[info.kind].output == "classes" else head_out[0]
        assert out.logits[info.id].shape == (2, width)
    assert set(out.sites) == {n for n in g.g if g.node(n).kind == "perturb"}
    assert eqx.filter_eval_shape(net, x).shape == (2, g.meta["classes"])


def test_every_op_has_a_lowering():
    assert set(OPS) <= set(LAYERS), set(OPS) - set(LAYERS)


def test_unknown_op_names_the_kind():
    with pytest.raises(NotImplementedError, match="`warp`"):
        make_layer("warp", {}, [(3,)], key=jax.random.key(0))


def test_forward_shapes_and_sites(tiny):
    plan, net = tiny_net(tiny, "lg-fg-a")
    x, y = batch()
    assert net(x).shape == (B, K)
    noise = {s: jax.random.normal(jax.random.key(i), (B, *shape))
             for i, (s, shape) in enumerate(net.site_shapes.items())}
    out = net.forward(x, y, noise=noise)
    assert out.losses[LOSS0].shape == out.losses[LOSS1].shape == (B, P, G)
    assert out.losses[FINAL].shape == (B,)
    assert len(out.sites) == 5  # two in the stem, three in the mixer
    for s in net.sites:
        np.testing.assert_allclose(out.sites[s], out.site_inputs[s] + noise[s])
    kept = net.forward(x, y, noise=noise, keep_values=True).values
    assert set(kept) == {net.input_id, *net.order}
    np.testing.assert_array_equal(kept[MIX_DENSE], net.values(x, noise=noise)[MIX_DENSE])
    assert net.forward(x, y).values == {}
    with pytest.raises(ValueError, match="unknown perturbation sites"):
        net.forward(x, y, noise={"nowhere": noise[net.sites[0]]})


# --- init ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,attrs,shape,fan_in", [
    ("dense", {"out": 64}, (784,), 784),
    ("group_linear", {"out": 16, "groups": 2}, (1024,), 512),
    ("token_mix", {}, (625, 4), 625),
    ("conv", {"out": 16, "kernel": 3, "stride": 1, "padding": "same"}, (8, 8, 64), 576),
    ("dense", {"out": 256}, (16,), 16),  # capped at 0.1
])
def test_init_statistics(kind, attrs, shape, fan_in):
    layer = make_layer(kind, {"bias": True, "init": "default", **attrs}, [shape],
                       key=jax.random.key(3))
    w = np.asarray(layer.weight)
    assert init_std(fan_in) == min(2 / np.sqrt(fan_in), 0.1)
    assert abs(w.mean()) < 0.05 * init_std(fan_in)
    assert w.std() == pytest.approx(init_std(fan_in), rel=0.05)
    assert not np.any(np.asarray(layer.bias))


def test_readout_is_zero_and_biases_start_at_zero(tiny):
    net = lower(tiny.plan(), jax.random.key(0))
    assert not np.any(np.asarray(net.layers[READOUT].weight))
    assert np.all(np.asarray(net(batch()[0])) == 0)
    for nid in (*BACKBONE, HEAD0, HEAD1, READOUT):
        assert not np.any(np.asarray(net.layers[nid].bias))
    assert np.std(np.asarray(net.layers[HEAD0].weight)) > 0


def test_same_key_same_params_across_algorithms(tiny):
    a = lower(tiny.plan("bp"), jax.random.key(0))
    b = lower(tiny.plan("lg-fg-a"), jax.random.key(0))
    leaves_a, leaves_b = (jax.tree_util.tree_leaves(eqx.filter(n, eqx.is_array)) for n in (a, b))
    assert len(leaves_a) == len(leaves_b) == 16
    assert all(bool(jnp.all(u == v)) for u, v in zip(leaves_a, leaves_b))
    assert a.stop_edges != b.stop_edges


# --- ground truth: a hand-written LocalMixer ------------------------------------------------------

def test_logits_and_losses_match_reference(tiny):
    plan, net = tiny_net(tiny, "lg-fg-a")
    x, y = batch()
    ref, ref_logits = reference(ref_params(net), x, y, **ALGOS["lg-bp"])
    np.testing.assert_allclose(net(x), ref_logits, rtol=1e-10, atol=1e-12)
    out = net.forward(x, y)
    np.testing.assert_allclose(out.logits[FINAL], ref_logits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.losses[FINAL], ref[FINAL], rtol=1e-10)
    for lid in (LOSS0, LOSS1):
        # Every replica of the fused loss is the plain cross-entropy of its example.
        np.testing.assert_allclose(out.losses[lid],
                                   jnp.broadcast_to(ref[lid][:, None, None], (B, P, G)), rtol=1e-10)
        np.testing.assert_allclose(out.losses[lid][:, 0, 0], xent(out.logits[lid], y), rtol=1e-12)


@pytest.mark.parametrize("algorithm", list(ALGOS))
def test_gradients_match_reference(tiny, algorithm):
    plan, net = tiny_net(tiny, algorithm)
    x, y = batch()
    ref = jax.grad(lambda p: total(reference(p, x, y, **ALGOS[algorithm])[0]))(ref_params(net))
    for replicas, nodes in (("sum", BACKBONE), ("mean", (HEAD0, HEAD1, READOUT))):
        grads = eqx.filter_grad(lambda n: total(n.forward(x, y).losses, replicas))(net)
        for nid in nodes:
            for name in ("weight", "bias"):
                np.testing.assert_allclose(getattr(grads.layers[nid], name), ref[nid][name],
                                           rtol=1e-8, atol=1e-11, err_msg=f"{nid}.{name}")
    if algorithm == "bp":  # the final loss alone trains the backbone, end to end
        assert max_abs(grad_of(net, x, y, FINAL), BACKBONE) > 1e-6


def grad_of(net, x, y, loss_id):
    return eqx.filter_grad(lambda n: total({loss_id: n.forward(x, y).losses[loss_id]}))(net)


def max_abs(grads, nodes) -> float:
    return max(float(jnp.abs(getattr(grads.layers[n], k)).max()) for n in nodes for k in ("weight", "bias"))


def test_greedy_stops_gradient_between_blocks(tiny):
    x, y = batch()
    _, lg = tiny_net(tiny, "lg-bp")
    _, l = tiny_net(tiny, "l-bp")
    assert max_abs(grad_of(lg, x, y, LOSS1), STEM) == 0.0
    assert max_abs(grad_of(l, x, y, LOSS1), STEM) > 1e-6
    assert max_abs(grad_of(lg, x, y, LOSS0), STEM) > 1e-6
    # Local targets: the readout learns, but sends nothing into the backbone.
    for net in (lg, l):
        g = grad_of(net, x, y, FINAL)
        assert max_abs(g, BACKBONE) == 0.0
        assert max_abs(g, (READOUT,)) > 1e-6


def test_greedy_stops_tangents_between_blocks(tiny):
    x, y = batch()
    stem_sites = [s for s in lower(tiny.plan("lg-fg-a"), jax.random.key(0)).sites
                  if s.startswith("stem.1/")]

    def tangent(net, loss_id):
        shapes = net.site_shapes
        zeros = {s: jnp.zeros((B, *shapes[s])) for s in stem_sites}
        dirs = {s: jax.random.normal(jax.random.key(i), (B, *shapes[s]))
                for i, s in enumerate(stem_sites)}
        _, dl = jax.jvp(lambda z: net.forward(x, y, noise=z).losses[loss_id], (zeros,), (dirs,))
        return float(jnp.abs(dl).max())

    _, lg = tiny_net(tiny, "lg-fg-a")
    _, l = tiny_net(tiny, "l-bp")
    assert tangent(lg, LOSS1) == 0.0
    assert tangent(lg, FINAL) == 0.0
    assert tangent(lg, LOSS0) > 1e-6
    assert tangent(l, LOSS1) > 1e-6


# --- a plain Equinox module ------------------------------------------------------------------

def test_jit_and_single_trace(tiny):
    plan, net = tiny_net(tiny, "lg-fg-a")
    x, y = batch()
    np.testing.assert_allclose(eqx.filter_jit(net)(x), net(x), rtol=1e-12)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(n, x, y):
        loss, g = eqx.filter_value_and_grad(lambda n: total(n.forward(x, y).losses))(n)
        return loss, jax.tree_util.tree_map(lambda p, d: p - 0.1 * d, n, g)

    loss0, net = step(net, x, y)
    loss1, net = step(net, x, y)
    assert float(loss1) < float(loss0)


def test_uint8_input_is_normalised_like_data(tiny):
    plan = tiny.plan()
    net = lower(plan, jax.random.key(0))
    raw = jax.random.randint(jax.random.key(5), (B, 8, 8, 1), 0, 256).astype(jnp.uint8)
    manual = lower(plan, jax.random.key(0), normalize=False)
    np.testing.assert_allclose(net.values(raw)["net/patchify.0"],
                               manual.values(normalize(raw, *DATASET_STATS["mnist"]))["net/patchify.0"])
    np.testing.assert_allclose(net.values(raw)["net/patchify.0"],
                               net.values(raw.astype(jnp.float32) / 255)["net/patchify.0"], rtol=1e-6)


def test_serialise_round_trip(tiny, tmp_path):
    plan, net = tiny_net(tiny, "lg-fg-a")
    eqx.tree_serialise_leaves(tmp_path / "net.eqx", net)
    fresh = lower(plan, jax.random.key(7), dtype=jnp.float64)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "net.eqx", fresh)
    x, _ = batch()
    np.testing.assert_array_equal(loaded(x), net(x))


def test_param_labels_and_weight_mask_drive_optax(tiny):
    plan, net = tiny_net(tiny, "lg-fg-a")
    assert set(plan.assignment) == {*BACKBONE, HEAD0, HEAD1, READOUT}  # the ids these tests use
    params = eqx.filter(net, eqx.is_array)
    labels = param_labels(net, plan)
    assert labels.layers[STEM_DENSE].weight == "backbone"
    assert labels.layers[HEAD1].bias == "heads"
    assert labels.layers[READOUT].weight == "readout"
    mask = weight_mask(net)
    assert mask.layers[MIX_TOKEN].weight and not mask.layers[MIX_TOKEN].bias

    rates = {"backbone": 1.0, "heads": 2.0, "readout": 0.1}
    # A Network-shaped tree is callable, so optax gets functions, not trees.
    opt = optax.partition({k: optax.chain(optax.add_decayed_weights(0.5, mask=weight_mask),
                                          optax.scale(-v)) for k, v in rates.items()},
                          functools.partial(param_labels, plan=plan))
    state = opt.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, state, params)
    for nid, group in ((STEM_GL, "backbone"), (HEAD0, "heads"), (READOUT, "readout")):
        np.testing.assert_allclose(updates.layers[nid].weight,
                                   -rates[group] * 0.5 * params.layers[nid].weight)
        assert not np.any(np.asarray(updates.layers[nid].bias))
    stepped = eqx.apply_updates(net, updates)
    assert isinstance(stepped, Network)


# --- individual layers -----------------------------------------------------------------------

def test_layers_against_direct_formulas():
    key = jax.random.key(0)
    img = jax.random.normal(key, (2, 6, 6, 4))
    conv1 = make_layer("conv", {"out": 3, "kernel": 1, "stride": 1, "padding": "same",
                                "bias": True, "init": "default"}, [(6, 6, 4)], key=key)
    np.testing.assert_allclose(conv1(img), img @ conv1.weight[0, 0] + conv1.bias[None, None, None],
                               rtol=1e-10)
    conv = make_layer("conv", {"out": 3, "kernel": 3, "stride": 2, "padding": "same",
                               "bias": False, "init": "default"}, [(6, 6, 4)], key=key)
    assert conv(img).shape == (2, 3, 3, 3)

    def pool(kind, padding):
        return make_layer(kind, {"size": 2, "stride": 0, "padding": padding}, [(5, 5, 1)], key=key)

    np.testing.assert_allclose(pool("avgpool", "same")(jnp.ones((1, 5, 5, 1))), 1.0)
    grid = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(pool("maxpool", "valid")(grid)[0, :, :, 0], [[5, 7], [13, 15]])
    np.testing.assert_allclose(pool("avgpool", "valid")(grid)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])

    gn = make_layer("groupnorm", {"groups": 2, "affine": True, "eps": 1e-5}, [(6, 6, 4)], key=key)
    y = gn(img).reshape(2, 36, 2, 2)
    np.testing.assert_allclose(y.mean(axis=(1, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(y.var(axis=(1, 3)), 1, rtol=1e-3)
    bn = make_layer("batchnorm", {"affine": False, "eps": 1e-5}, [(6, 6, 4)], key=key)
    np.testing.assert_allclose(bn(img).mean(axis=(0, 1, 2)), 0, atol=1e-10)
    np.testing.assert_allclose(bn(3 * img + 1), bn(img), rtol=1e-4, atol=1e-5)

    grid = jnp.arange(2 * 4 * 4 * 3.0).reshape(2, 4, 4, 3)
    patches = make_layer("patchify", {"per_side": 2}, [(4, 4, 3)], key=key)(grid)
    np.testing.assert_array_equal(patches[:, 1], grid[:, 0:2, 2:4, :].reshape(2, -1))
    np.testing.assert_array_equal(
        make_layer("flatten", {}, [(4, 4, 3)], key=key)(grid), grid.reshape(2, -1))


# --- replicas -------------------------------------------------------------------------------

def test_replica_sees_only_its_own_patch_and_group(tiny):
    _, net = tiny_net(tiny, "lg-fg-a")
    x, y = batch()
    site = "stem.1/perturb.6"  # the stem's last site: relu and the per-group head LN follow
    zeros = {site: jnp.zeros((B, P, C))}
    for p, g in ((0, 0), (2, 1)):
        direction = jnp.zeros((B, P, C)).at[:, p, g * (C // G):(g + 1) * (C // G)].set(1.0)
        _, dl = jax.jvp(lambda z: net.forward(x, y, noise=z).losses[LOSS0], (zeros,),
                        ({site: direction},))
        assert float(jnp.abs(dl[:, p, g]).min()) > 0
        assert float(jnp.abs(dl.at[:, p, g].set(0)).max()) == 0.0


@pytest.mark.parametrize("replicate,shape", [("[patches]", (B, P, 1)), ("[groups]", (B, 1, G))])
def test_partial_replication_matches_reference(replicate, shape):
    prog = fgc.loads(TINY.replace(REPLICATE, f"replicate = {replicate}"), "tiny.fg")
    _, net = tiny_net(prog, "l-bp")
    x, y = batch()
    ref, _ = reference(ref_params(net), x, y, **ALGOS["l-bp"])
    out = net.forward(x, y)
    assert out.losses[LOSS0].shape == shape
    np.testing.assert_allclose(out.losses[LOSS1], jnp.broadcast_to(
        ref[LOSS1].reshape(B, 1, 1), shape), rtol=1e-10)
    grads = eqx.filter_grad(lambda n: total(n.forward(x, y).losses))(net)
    want = jax.grad(lambda p: total(reference(p, x, y, **ALGOS["l-bp"])[0]))(ref_params(net))
    for nid in BACKBONE:
        np.testing.assert_allclose(grads.layers[nid].weight, want[nid]["weight"], rtol=1e-8,
                                   atol=1e-11, err_msg=nid)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
def test_group_linear_is_its_block_diagonal_matmul(groups, lead):
    """group_linear (a grouped convolution for G > 1) against ``x @ block_diag(W_g) + b``
    in float64: output, and gradients with respect to input, weight and bias."""
    with jax.enable_x64(True):
        layer = make_layer("group_linear", {"out": 8, "groups": groups, "bias": True}, [(12,)],
                           key=jax.random.key(1), dtype=jnp.float64)
        layer = eqx.tree_at(lambda l: l.bias, layer,
                            jax.random.normal(jax.random.key(2), layer.bias.shape, jnp.float64))
        x = jax.random.normal(jax.random.key(3), lead + (12,), jnp.float64)

        def naive(l, x):
            y = x @ block_diag(*l.weight)
            return y + l.bias.reshape((1,) * (y.ndim - 1) + (-1,))

        np.testing.assert_allclose(layer(x), naive(layer, x), rtol=1e-13, atol=1e-14)
        cot = jax.random.normal(jax.random.key(4), lead + (8,), jnp.float64)
        got = jax.grad(lambda l, x: (l(x) * cot).sum(), argnums=(0, 1))(layer, x)
        want = jax.grad(lambda l, x: (naive(l, x) * cot).sum(), argnums=(0, 1))(layer, x)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
