"""``fgc verify`` for ``project(...)`` estimators: forward mode against the exact projection.

A projection is not an unbiased estimator of the gradient, so the check is not a mean
of many draws: for a few draws of the guess, every piece the rule computed in forward
mode is compared (allclose, float64) with the same piece computed here by ``jax.grad``
through an interpreter of its own:

1. the guess ``G̃`` (deterministic guesses: the gradient of the guess losses; for
   ``ntk`` with the heads the rule drew, for random guesses the rule's draw is used),
2. ``⟨G, G̃⟩`` per sample (or per tensor, block, globally), ``G`` being ``jax.grad`` of
   the plain target losses at the block output (activity) or, per example, at a layer's
   parameters (weights: the example's own cotangent pulled back through the layer,
   which is evaluated on the whole batch),
3. the update: ``ĝ`` from those, and in activity space the block-local backward of it
   (a reverse pass over the block's own layers).

Heads are compared with :func:`fgc.learning.reference.reference_grads` (exact).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fgc.learning.reference import _xent
from fgc.lowering.modules import StatefulLayer, trainable
from fgc.training.data import normalize

CHECK = ("exact projection: the guess, ⟨G, G̃⟩ per {granularity} and the update, each "
         "allclose to jax.grad of the plain target and guess losses")


def _downstream(net, nodes) -> set[str]:
    ins = {s.id: s.inputs for s in net.steps}
    out, changed = set(), True
    while changed:
        changed = False
        for s, i in ins.items():
            if s not in out and any(u in out or u in nodes for u in i):
                out.add(s)
                changed = True
    return out


def _values(net, x, *, train=True, add=None, keep=None, layers=None, cut=None):
    """Every node's value. ``add``: node → delta added to its output; ``keep``: node →
    a value used instead of computing it; ``layers``: node → a layer replacing the
    network's; ``cut``: a set of nodes whose steps see their other inputs stopped."""
    if net.input_mean is not None:
        x = normalize(x, net.input_mean, net.input_std)
    vals = {net.input_id: x}
    for s in net.steps:
        if keep is not None and s.id in keep:
            out = keep[s.id]
        else:
            args = [jax.lax.stop_gradient(vals[u]) if stop or (cut is not None and s.id in cut
                                                                 and u not in cut) else vals[u]
                    for u, stop in zip(s.inputs, s.stops)]
            layer = (layers or {}).get(s.id, net.layers[s.id])
            out = layer(*args, train=train) if isinstance(layer, StatefulLayer) else layer(*args)
        if add is not None and s.id in add:
            out = out + add[s.id]
        vals[s.id] = out
    return vals


def _objective(net, vals, labels, losses):
    total = 0.0
    for lid in losses:
        h = net.loss_head(lid)
        z = vals[h.logits_node]
        total = total + _xent(jax.lax.stop_gradient(z) if h.stop else z, labels).mean()
    return total


def _grad_at(net, x, labels, base, nodes, losses, *, train=True, layers=None):
    """``∂/∂δ`` of the losses' objective, ``δ`` added at ``nodes``; what is not downstream
    of them keeps the values ``base``."""
    live = _downstream(net, set(nodes))
    keep = {k: v for k, v in base.items() if k not in live and k != net.input_id}

    def f(add):
        return _objective(net, _values(net, x, train=train, add=add, keep=keep, layers=layers),
                          labels, losses)
    return jax.grad(f)({n: jnp.zeros_like(base[n]) for n in nodes})


def _per_example_param_grad(layer, args, cot, train):
    """``(∂y_n/∂p)ᵀ cot_n`` per example, the layer evaluated on the whole batch."""
    p, rest = eqx.partition(layer, trainable(layer))

    def y_n(q, n):
        lay = eqx.combine(q, rest)
        y = lay(*args, train=train) if isinstance(lay, StatefulLayer) else lay(*args)
        return y[n]
    return [jax.vjp(lambda q: y_n(q, n), p)[1](cot[n])[0] for n in range(cot.shape[0])]


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(np.linalg.norm(a - b)) / (float(np.linalg.norm(b)) or 1.0)


def _flat(t) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree_util.tree_leaves(t)]
                          or [np.zeros(0)])


def _close(a, b, scale):
    from fgc.learning.verify import ROUND_OFF
    return bool(np.allclose(_flat(a), _flat(b), rtol=1e-6, atol=1e-9 * scale + ROUND_OFF))


def check_pass(rule, net, x, labels, key):
    """``(problems, dev)`` of one projection pass on one draw: what differs from the
    exact projection (empty: nothing), and per parameter node the relative difference
    of the rule's update from the exact one."""
    est = rule.estimator
    params, static = eqx.partition(net, trainable(net))
    out = net.forward(x, labels, keep_values=True)
    values = out.values
    parts = rule.parts(net, x, labels, key, values)
    grads = rule.finish(params, static, x, labels, values, parts)
    base = _values(net, x)
    guess_train = est.guess_bn == "train"
    problems, dev, pairs = [], {}, {}
    steps = {s.id: s for s in net.steps}

    def top(t):
        return max([float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(t)] + [1e-30])

    dots, sqs = [], []
    for i, (u, part) in enumerate(zip(rule.units, parts)):
        k = jax.random.fold_in(key, i)
        gnet = rule.guess_net(net, u, k)
        heads = {n: gnet.layers[n] for n in gnet.layers if gnet.layers[n] is not net.layers[n]}
        if est.space == "activity":
            G = _grad_at(net, x, labels, base, (u.output,), u.target_losses)[u.output]
            guess = part["guess"]
            if u.guess != "random":
                ref = _grad_at(net, x, labels, base, (u.output,), u.guess_losses,
                               train=guess_train, layers=heads)[u.output]
                if not _close(guess, ref, top(ref)):
                    problems.append(f"{u.block}: guess ≠ ∇ of {', '.join(u.guess_losses)}")
            prod = G * guess
            dot = prod.reshape(prod.shape[0], -1).sum(1) if est.granularity == "sample" \
                else prod.sum()
            sq = jnp.square(guess).reshape(prod.shape[0], -1).sum(1) \
                if est.granularity == "sample" else jnp.square(guess).sum()
            if not _close(part["dot"], dot, top(dot)):
                problems.append(f"{u.block}: forward-mode ⟨G, G̃⟩ ≠ exact")
            dots.append(dot)
            sqs.append(sq)
            continue
        # weights: per example and tensor, the exact per-example target gradient
        gam_t = _grad_at(net, x, labels, base, u.params, u.target_losses)
        gam_g = None if u.guess == "random" else _grad_at(
            net, x, labels, base, u.params, u.guess_losses, train=guess_train, layers=heads)
        d_unit = s_unit = 0.0
        for n in u.params:
            args = [base[v] for v in steps[n].inputs]
            Gn = _per_example_param_grad(net.layers[n], args, gam_t[n], True)
            Gl = [jax.tree_util.tree_leaves(g) for g in Gn]
            guess_l = jax.tree_util.tree_leaves(part["guess"][n])
            if gam_g is not None:
                Rn = _per_example_param_grad(net.layers[n], args, gam_g[n], guess_train)
                Rl = [jax.tree_util.tree_leaves(g) for g in Rn]
                for j, a in enumerate(guess_l):
                    ref = jnp.stack([r[j] for r in Rl]) if est.granularity == "sample" \
                        else sum(r[j] for r in Rl)
                    if not _close(a, ref, top(ref)):
                        problems.append(f"{n}: guess ≠ ∇ of {', '.join(u.guess_losses)}")
            for j, a in enumerate(guess_l):
                if est.granularity == "sample":
                    d = jnp.stack([(Gl[m][j] * a[m]).sum() for m in range(a.shape[0])])
                    sq = jnp.square(a).reshape(a.shape[0], -1).sum(1)
                else:
                    d = (sum(g[j] for g in Gl) * a).sum()
                    sq = jnp.square(a).sum()
                if est.granularity in ("sample", "tensor"):
                    if not _close(part["dot"][n, j], d, top(d)):
                        problems.append(f"{n}: forward-mode ⟨G, G̃⟩ of tensor {j} ≠ exact")
                    s = d / (sq + est.eps)
                    want = (s.reshape((-1,) + (1,) * (a.ndim - 1)) * a).sum(0) \
                        if est.granularity == "sample" else s * a
                    got = jax.tree_util.tree_leaves(part["hat"][n])[j]
                    pairs.setdefault(n, []).append((got, want))
                    if not _close(got, want, top(want)):
                        problems.append(f"{n}: ĝ of tensor {j} ≠ exact projection")
                d_unit, s_unit = d_unit + d, s_unit + sq
        if est.granularity in ("block", "global"):
            if not _close(part["dot"]["unit"], d_unit, top(d_unit)):
                problems.append(f"{u.block}: forward-mode ⟨G, G̃⟩ ≠ exact")
            dots.append(d_unit)
            sqs.append(s_unit)
    # the update from the exact pieces
    if est.space == "activity" or est.granularity in ("block", "global"):
        if est.granularity == "global":
            scales = [sum(dots) / (sum(sqs) + est.eps)] * len(dots)
        else:
            scales = [d / (s + est.eps) for d, s in zip(dots, sqs)]
        if est.space == "activity":
            hats = {}
            for u, part, s in zip(rule.units, parts, scales):
                g = part["guess"]
                hats[u] = (s.reshape((-1,) + (1,) * (g.ndim - 1)) if est.granularity == "sample"
                           else s) * g

            def local(p):
                m = eqx.combine(p, static)
                total = 0.0
                for u, h in hats.items():
                    a = _values(m, x, cut=set(u.segment))[u.output]
                    total = total + jnp.sum(jax.lax.stop_gradient(h) * a)
                return total
            want = jax.grad(local)(params)
            for u in rule.units:
                for n in u.params:
                    w, g = want.layers[n], grads.layers[n]
                    dev[n] = _rel(g, w)
                    if not _close(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(w),
                                  top(w)):
                        problems.append(f"{n}: weight gradient ≠ local backward of the exact ĝ")
        else:
            for u, part, s in zip(rule.units, parts, scales):
                for n in u.params:
                    for a, got in zip(jax.tree_util.tree_leaves(part["guess"][n]),
                                      jax.tree_util.tree_leaves(part["hat"][n])):
                        pairs.setdefault(n, []).append((got, s * a))
                        if not _close(got, s * a, top(s * a)):
                            problems.append(f"{n}: ĝ ≠ exact projection")
    for n, ps in pairs.items():  # the whole node: a leaf at round-off says nothing alone
        dev[n] = _rel([g for g, _ in ps], [w for _, w in ps])
    return problems, dev


def verify_projection(plan, *, samples: int = 3, batch_size: int = 4, seed: int = 0):
    """A :class:`~fgc.learning.verify.Report` of every group of a plan with a
    ``project(...)`` estimator: projections against the exact projection, the rest
    exact (allclose to the reference gradient)."""
    import time

    from fgc.learning.projection import _Projection
    from fgc.learning.verify import LayerCheck, Report, _by_node, _setup
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        net, x, y, rule, est_of, true = _setup(plan, batch_size, seed)
        draws = max(1, min(samples, 3))
        bad: dict[str, list[str]] = {}
        own = set()
        dev: dict[str, float] = {}
        for p in rule.passes:
            if not isinstance(p, _Projection):
                continue
            own |= {n for u in p.units for n in u.params}
            for d in range(draws):
                key = jax.random.key(seed + 7 + d)
                problems, devs = check_pass(p, net, x, y, key)
                for msg in problems:
                    bad.setdefault(msg.split(":")[0], []).append(msg)
                for k, v in devs.items():
                    dev[k] = max(dev.get(k, 0.0), v)
        full = rule.estimate(net, x, y, jax.random.key(seed + 7))
        got_all = _by_node(full.grads)
        order = {n: i for i, n in enumerate(plan.graph.topo())}
        top = max((float(np.abs(g).max()) for g in true.values() if g.size), default=0.0)
        layers = []
        gran = sorted({e.granularity for e in est_of.values() if e.kind == "project"})
        for n, g in sorted(true.items(), key=lambda kv: order[kv[0]]):
            group = plan.assignment[n]
            if n in own:
                msgs = [m for k, ms in bad.items() for m in ms
                        if k == n or any(k == u.block and n in u.params
                                         for p in rule.passes if isinstance(p, _Projection)
                                         for u in p.units)]
                layers.append(LayerCheck(n, group, est_of[n].describe(), g.size,
                                         math.inf if msgs else 0.0, dev.get(n, math.inf), 0.0,
                                         not msgs and n in dev))
                continue
            scale = max(float(np.abs(g).max()) if g.size else 0.0, 1e-4 * top)
            ok = _close(got_all[n], g, scale)
            layers.append(LayerCheck(n, group, "exact", g.size, 0.0 if ok else math.inf,
                                     float(np.linalg.norm(got_all[n] - g))
                                     / (float(np.linalg.norm(g)) or 1.0), 0.0, ok))
    return Report(plan.graph.meta.get("algorithm") or "?", "–", draws, batch_size, 0.0, layers,
                  time.perf_counter() - t0, check=CHECK.format(granularity="/".join(gran) or "?"),
                  problems=[m for ms in bad.values() for m in ms])
