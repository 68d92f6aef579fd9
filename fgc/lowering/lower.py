"""Lowering: a planned graph becomes an ordinary Equinox module.

``lower(plan, key)`` builds one layer per op node (:mod:`fgc.lowering.modules`) and wraps
them in a :class:`Network`: a plain ``eqx.Module`` that can be called, jitted,
differentiated and serialised without the rest of fgc. The plan's decisions are
baked in as static metadata: the stop-gradient edges, the perturbation sites and
the losses with their heads.

Parameters live in ``network.layers``, a dict keyed by node id, so a parameter's
tree path names its node (``.layers['stem.1/dense.0'].weight``); that is how
:func:`param_labels` maps each array to its parameter group for
``optax.partition``.

Example:
    >>> import jax, fgc
    >>> from fgc.lowering.lower import lower, param_labels
    >>> plan = fgc.load("specs/mixer-s-1-1.fg").plan("lg-bp")   # doctest: +SKIP
    >>> net = lower(plan, jax.random.key(0))                     # doctest: +SKIP
    >>> logits = net(images)                      # [B, classes]   doctest: +SKIP
    >>> out = net.forward(images, labels)         # losses, logits, sites   doctest: +SKIP
"""
# Design notes.
# - One interpreter (`Network.run`) walks the steps; the plan only changes which
#   edges stop gradients, so every algorithm shares the same code path.
# - Replicated losses are not built from their head ops: the value before the
#   head's `mean` goes to `fgc.lowering.replicated.replicated_xent` with the `linear`
#   layer's parameters (one pass for all P*G replicas). The head's `mean` and
#   `linear` still run, to give the logits.

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from fgc.training.data import DATASET_STATS, normalize as _normalize
from fgc.errors import LoweringError
from fgc.graph.loss_kinds import LOSS_KINDS as _KINDS
from fgc.lowering.loss_rules import RULES as _LOSS_RULES, loss_rule, replicated_loss
from fgc.lowering.modules import (AbstractLayer, Buffer, FrozenLayers, StatefulLayer,
                                  make_layer, trainable)
from fgc.lowering.params import count_params, param_labels, weight_mask  # re-exported

if TYPE_CHECKING:
    from fgc.plan.pieces import Piece
    from fgc.plan.program import Plan

__all__ = ["DATASET_STATS", "Forward", "LossHead", "Network", "Step", "count_params", "lower",
           "param_labels", "trainable", "weight_mask"]

Shape = tuple[int, ...]

Intercept = Callable[["Step", Callable[..., Array], list[Array]], Array]

LOSS_KINDS = tuple(_LOSS_RULES)  # the kinds with a lowering (fgc.lowering.loss_rules)


@dataclass(frozen=True)
class Step:
    """One op node of the program, in topological order.

    Attributes:
      id: node id (``mixer.1/dense.4``).
      kind: op name.
      inputs: operand node ids, in port order.
      stops: per operand, whether that edge stops gradients and tangents.
      role: ``op`` (backbone) or ``head``.
      loss: for head ops, the loss they belong to.
      shape: per-example output shape.
    """

    id: str
    kind: str
    inputs: tuple[str, ...]
    stops: tuple[bool, ...]
    role: str
    loss: str | None
    shape: Shape


@dataclass(frozen=True)
class LossHead:
    """One loss instance as lowered (an immutable, hashable copy of :class:`fgc.graph.ir.LossInfo`).

    Attributes:
      id: loss id (``loss:local@mixer.1``).
      name: the declared loss name (``local``).
      kind: loss kind (``xent``).
      source: node id the head reads.
      head: head op ids, in order; the last one gives the logits.
      final: whether the loss reads the network output.
      replicate: subset of ``("patches", "groups")``.
      groups: channel groups of the replicas (1 unless replicated over groups).
      stop: the edge into the loss itself stops gradients (a loss with no head
        ops reading a stop-gradiented source).
      options: the kind's options, ``(name, value)`` pairs (``temperature`` ...).
    """

    id: str
    name: str
    kind: str
    source: str
    head: tuple[str, ...]
    final: bool
    replicate: tuple[str, ...]
    groups: int
    stop: bool = False
    options: tuple[tuple[str, object], ...] = ()

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def logits_node(self) -> str:
        return self.head[-1] if self.head else self.source

    @property
    def fused(self) -> bool:
        """Replicated losses run as ``<per-patch ops> | mean | linear`` fused into one op."""
        return bool(self.replicate)


class Forward(eqx.Module):
    """What :meth:`Network.forward` returns.

    Attributes:
      losses: loss id → per-example losses. Plain losses: ``[B]``. Replicated
        losses: ``[B, P, G]`` from :func:`fgc.lowering.replicated.replicated_xent`,
        where an axis not replicated over has size 1 (``[B, P, 1]`` for
        ``replicate = [patches]``, ``[B, 1, G]`` for ``[groups]``). Every replica
        of example ``n`` has the same value; its derivative flows only through
        its own patch and group.
      logits: loss id → ``[B, classes]``.
      sites: perturbation site id → the activation after the noise, ``u + z``.
      site_inputs: site id → the activation before the noise, ``u``.
      values: node id → every node's output as in :meth:`Network.values`, when
        asked for (else empty).
      state: node id → the new buffers of each stateful layer (batch-norm
        running statistics) after this batch; empty in evaluation.
      boundary: when one piece ran, its outputs that later pieces read
        (:attr:`fgc.plan.pieces.Piece.gives`); else empty.
    """

    losses: dict[str, Array]
    logits: dict[str, Float[Array, "batch classes"]]
    sites: dict[str, Array]
    site_inputs: dict[str, Array]
    values: dict[str, Array]
    state: dict[str, Buffer]
    boundary: dict[str, Array] = eqx.field(default_factory=dict)


class Network(eqx.Module):
    """A lowered network: parameterised layers plus the static program that wires them.

    Call it for inference (``net(x) -> logits`` of the final loss), or use
    :meth:`forward` for training (every loss, noise at the perturbation sites).
    Inputs are raw batches ``[B, *input_shape]``: uint8 on 0..255 or floats on
    [0, 1]. When the network knows the dataset statistics (``normalize =`` in
    the spec) it normalises them itself, exactly as :func:`fgc.training.data.normalize`
    does; a network lowered with ``normalize=False`` expects normalised input.

    Attributes:
      layers: node id → layer module, one per op node (parameterless ones
        included: they hold no arrays).
      steps: the program, in topological order.
      loss_heads: the losses and their heads.
      sites: ids of the perturbation sites (backbone ``perturb`` nodes), in order.
      final_loss: id of the loss whose logits ``__call__`` returns.
      input_shape: per-example input shape.
      input_mean, input_std: per-channel dataset statistics, or None to take
        the input as given.
      algorithm: the algorithm whose stop-gradient edges are baked in.
      feedback: node id → its fixed random feedback matrix
        (:class:`fgc.lowering.modules.Feedback`, a buffer), as the plan's
        ``feedback`` asks (:mod:`fgc.plan.feedback`); empty for other algorithms.
      fixed: the fixed random auxiliary heads of ``project(guess = fixed)`` (a
        buffer: never trained), head node id → layer; empty otherwise.
      pieces: the plan's pieces (:mod:`fgc.plan.pieces`): parts of the program that
        :meth:`forward` can run one at a time (``piece=``), from the values earlier
        pieces hand on; () or one piece: the whole program.
    """

    layers: dict[str, AbstractLayer]
    steps: tuple[Step, ...] = eqx.field(static=True)
    loss_heads: tuple[LossHead, ...] = eqx.field(static=True)
    sites: tuple[str, ...] = eqx.field(static=True)
    final_loss: str = eqx.field(static=True)
    input_id: str = eqx.field(static=True)
    input_shape: Shape = eqx.field(static=True)
    input_mean: tuple[float, ...] | None = eqx.field(static=True)
    input_std: tuple[float, ...] | None = eqx.field(static=True)
    algorithm: str | None = eqx.field(static=True)
    feedback: dict[str, Buffer] = eqx.field(default_factory=dict)
    fixed: FrozenLayers | None = None
    pieces: tuple[Piece, ...] = eqx.field(static=True, default=())

    def __check_init__(self):
        ids = {s.id for s in self.steps}
        if set(self.layers) != ids:
            raise ValueError("every step needs exactly one layer")
        if self.final_loss not in {l.id for l in self.loss_heads}:
            raise ValueError(f"unknown final loss `{self.final_loss}`")

    # --- static views --------------------------------------------------------------------
    @property
    def order(self) -> tuple[str, ...]:
        """Op node ids in topological order."""
        return tuple(s.id for s in self.steps)

    @property
    def stop_edges(self) -> frozenset[tuple[str, str]]:
        """``(u, v)`` for every edge that stops gradients and tangents."""
        return frozenset((u, s.id) for s in self.steps for u, stop in zip(s.inputs, s.stops)
                         if stop)

    @property
    def site_shapes(self) -> dict[str, Shape]:
        """Per-example shape of each perturbation site (noise is ``[B, *shape]``)."""
        shapes = {s.id: s.shape for s in self.steps}
        return {site: shapes[site] for site in self.sites}

    def loss_head(self, loss_id: str) -> LossHead:
        for l in self.loss_heads:
            if l.id == loss_id:
                return l
        raise KeyError(f"no loss `{loss_id}` (losses: {', '.join(l.id for l in self.loss_heads)})")

    # --- running -------------------------------------------------------------------------
    def __call__(self, x: Array) -> Float[Array, "batch classes"]:
        """Logits of the final loss's head, ``[B, classes]``, in evaluation mode (batch
        norm reads its running statistics); runs only what they need."""
        head = self.loss_head(self.final_loss)
        vals, _, _, _ = self.run(x, need=head.logits_node, train=False)
        return vals[head.logits_node]

    def forward(self, x: Array, labels: Int[Array, " batch"] | None = None, *,
                noise: dict[str, Array] | None = None, keep_values: bool = False,
                train: bool = True, intercept: Intercept | None = None,
                piece: Piece | None = None, given: dict[str, Array] | None = None) -> Forward:
        """Runs the whole program in training mode: every loss, with optional activity noise.

        Args:
          x: raw inputs ``[B, *input_shape]`` (see the class docstring).
          labels: integer classes ``[B]``; without them ``losses`` is empty.
          noise: site id → noise ``[B, *site_shape]`` added at that ``perturb``
            node; sites not named get none. To get activity-perturbation
            tangents, pass zeros as the primal and the noise as the tangent of
            ``jax.jvp``: stop-gradient edges stop those tangents too.
          keep_values: also return every node's output; off by default, as a
            jitted function returning them keeps every activation alive.
          train: batch statistics (and new buffers in ``state``); False reads
            the buffers, as evaluation does.
          intercept: see :meth:`run`.
          piece, given: run only this piece (one of :attr:`pieces`) and compute only its
            losses, reading the values of the nodes it reads from ``given`` (node id →
            value, as earlier pieces' ``boundary`` gave them; the input comes from
            ``x``). Its outputs for later pieces come back in ``boundary``.

        Returns:
          A :class:`Forward` with per-example losses, logits, site values and state.
        """
        if noise:
            unknown = sorted(set(noise) - set(self.sites))
            if unknown:
                raise ValueError(f"noise for unknown perturbation sites {unknown}; "
                                 f"sites: {list(self.sites)}")
        vals, sites, site_inputs, state = self.run(x, noise=noise or {}, train=train,
                                                   intercept=intercept, piece=piece, given=given)
        heads = self.loss_heads if piece is None else \
            tuple(l for l in self.loss_heads if l.id in piece.losses)
        logits = {l.id: vals[l.logits_node] for l in heads}
        losses = {}
        if labels is not None:
            for l in heads:
                if l.fused:
                    losses[l.id] = self._fused_loss(l, vals, labels)
                else:
                    z = jax.lax.stop_gradient(logits[l.id]) if l.stop else logits[l.id]
                    losses[l.id] = loss_rule(l.kind).plain(z, labels, l.opts)
        boundary = {} if piece is None else {n: vals[n] for n in piece.gives}
        return Forward(losses, logits, sites, site_inputs, vals if keep_values else {}, state,
                       boundary)

    def values(self, x: Array, *, noise: dict[str, Array] | None = None,
               train: bool = True) -> dict[str, Array]:
        """Every node's output, node id → ``[B, *shape]`` (the input node's is the
        normalised input); for inspection and for estimators that need layer inputs."""
        return self.run(x, noise=noise or {}, train=train)[0]

    def run(self, x: Array, *, noise: dict[str, Array] | None = None, need: str | None = None,
            train: bool = True, intercept: Intercept | None = None,
            piece: Piece | None = None, given: dict[str, Array] | None = None):
        """The interpreter: every step in topological order (only those ``need`` needs,
        or only ``piece``'s, reading ``given`` for what earlier pieces computed).

        ``intercept(step, apply, args)`` (optional) computes a step's output in
        place of ``apply(*args)``: the hook through which update rules change how
        values flow (cut gradients at sites, reuse primal values) without the
        network knowing about them.

        Returns:
          ``(values, sites, site_inputs, state)``: node id → output; site id →
          output and input; stateful node id → its new buffers (training only).
        """
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected inputs [B, {', '.join(map(str, self.input_shape))}], "
                             f"got shape {tuple(x.shape)}")
        if self.input_mean is not None:
            x = _normalize(x, self.input_mean, self.input_std)
        wanted = None if need is None else _ancestors(self.steps, need)
        if piece is not None:
            wanted = set(piece.nodes)
            missing = [u for u in piece.reads if u != self.input_id and u not in (given or {})]
            if missing:
                raise ValueError(f"piece `{piece.name}` reads {missing}, which `given` lacks")
        vals: dict[str, Array] = {self.input_id: x, **(given or {})}
        sites, site_inputs, state = {}, {}, {}
        noise = noise or {}
        for s in self.steps:
            if wanted is not None and s.id not in wanted:
                continue
            args = [jax.lax.stop_gradient(vals[u]) if stop else vals[u]
                    for u, stop in zip(s.inputs, s.stops)]
            layer = self.layers[s.id]
            if isinstance(layer, StatefulLayer):
                apply = functools.partial(layer, train=train)
                if train:
                    state[s.id] = layer.next_state(*args)
            elif s.id in noise:
                apply = functools.partial(layer, noise=noise[s.id])
            else:
                apply = layer
            vals[s.id] = intercept(s, apply, args) if intercept is not None else apply(*args)
            if s.kind == "perturb" and s.role == "op":
                site_inputs[s.id] = args[0]
                sites[s.id] = vals[s.id]
        return vals, sites, site_inputs, state

    def with_state(self, state: dict[str, Buffer]) -> "Network":
        """The network with the buffers of ``state`` (node id → new buffers) in place."""
        if not state:
            return self
        ids = sorted(state)
        return eqx.tree_at(lambda n: [n.layers[i].stats for i in ids], self,
                           [state[i] for i in ids])

    def _fused_loss(self, loss: LossHead, vals: dict, labels: Array) -> Array:
        # The head is `<per-patch ops> | mean | linear`: hand the value before the
        # mean to the fused replicated loss, with the linear layer's parameters.
        mean_id, linear_id = loss.head[-2], loss.head[-1]
        steps = {s.id: s for s in self.steps}
        h = vals[steps[mean_id].inputs[0]]
        if steps[mean_id].stops[0] or steps[linear_id].stops[0]:
            h = jax.lax.stop_gradient(h)
        linear = self.layers[linear_id]
        bias = linear.bias if linear.bias is not None else jnp.zeros(linear.weight.shape[1],
                                                                     linear.weight.dtype)
        if h.ndim == 2:  # a vector source: one "patch"
            h = h[:, None, :]
        elif h.ndim > 3:  # an image source: its positions are the patches
            h = h.reshape(h.shape[0], -1, h.shape[-1])
        if "patches" not in loss.replicate:
            # One replica per group over all patches: pool first, then P = 1.
            h = jnp.mean(h, axis=1, keepdims=True)
        return replicated_loss(loss.kind, loss.opts, h, linear.weight, bias, labels,
                               loss.groups)


def _ancestors(steps: tuple[Step, ...], target: str) -> set[str]:
    inputs = {s.id: s.inputs for s in steps}
    seen, todo = set(), [target]
    while todo:
        n = todo.pop()
        if n in seen or n not in inputs:
            continue
        seen.add(n)
        todo.extend(inputs[n])
    return seen


def lower(plan: Plan, key: PRNGKeyArray, *, dtype=jnp.float32, normalize: bool = True,
          stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Network:
    """Builds the network a plan describes, with freshly initialised parameters.

    Each node's weights come from ``fold_in(key, crc32(node id))``, so a node's
    initial values depend on its id and the key only: plans of one spec under
    different algorithms lower to identical parameters, and editing one block
    does not reshuffle the others.

    Args:
      plan: a :class:`fgc.plan.program.Plan` (its graph's stop-gradient edges are baked in).
      key: PRNG key.
      dtype: parameter dtype.
      normalize: normalise inputs inside the network with the dataset
        statistics; False leaves that to the caller.
      stats: ``(mean, std)`` per channel on the [0, 1] scale; default: looked up
        from the spec's ``normalize =`` name in :data:`DATASET_STATS` (no
        normalisation for an unknown name or none).

    Returns:
      The :class:`Network`.

    Raises:
      LoweringError: an op or loss kind has no lowering.
    """
    g = plan.graph
    steps, layers = [], {}
    input_id = None
    for nid in g.topo():
        d = g.node(nid)
        if d.kind == "input":
            input_id = nid
            continue
        if d.role == "loss":
            continue
        ins = g.inputs(nid)
        layer = make_layer(d.kind, d.attrs, [g.node(u).shape for u in ins],
                           key=jax.random.fold_in(key, zlib.crc32(nid.encode())), dtype=dtype)
        got = {f.name: tuple(getattr(layer, f.name).shape) for f in dataclasses.fields(layer)
               if eqx.is_array(getattr(layer, f.name))}
        if got != {k: tuple(v) for k, v in d.params.items()}:
            raise AssertionError(f"lowering `{nid}` ({d.kind}) made parameters {got}, "
                                 f"but fgc.graph.ops says {d.params}")
        layers[nid] = layer
        steps.append(Step(nid, d.kind, tuple(ins), tuple(g.edge(u, nid).stop_gradient for u in ins),
                          d.role, d.loss, tuple(d.shape)))
    if input_id is None:
        raise ValueError("the graph has no input node")
    losses = []
    for info in g.losses.values():
        if info.kind not in LOSS_KINDS:
            raise LoweringError(f"loss kind `{info.kind}` of `{info.id}` has no lowering "
                                      f"(lowered: {', '.join(LOSS_KINDS)})")
        into_loss = g.edge(g.inputs(info.id)[0], info.id)
        losses.append(LossHead(info.id, info.name, info.kind, info.source, tuple(info.head_nodes),
                               info.final, tuple(info.replicate),
                               info.groups if "groups" in info.replicate else 1,
                               into_loss.stop_gradient, tuple(sorted(info.options.items()))))
    if not losses:
        raise ValueError("the graph has no loss")
    # The classifier on `output` (a loss against labels) is what `__call__` reads out.
    finals = [l.id for l in losses if l.final and _KINDS[l.kind].targets == "labels"] or \
        [l.id for l in losses if l.final]
    # Without a final loss, __call__ reads out the last local loss.
    final = finals[0] if finals else losses[-1].id
    mean = std = None
    if normalize:
        mean, std = stats if stats is not None else DATASET_STATS.get(g.meta.get("normalize"),
                                                                       (None, None))
    if mean is not None:
        mean, std = tuple(map(float, mean)), tuple(map(float, std))
    fixed = {n: make_layer(g.node(n).kind, g.node(n).attrs, [g.node(u).shape for u in g.inputs(n)],
                           key=jax.random.fold_in(key, zlib.crc32(f"fixed:{n}".encode())),
                           dtype=dtype)
             for units in getattr(plan, "units", {}).values() for u in units
             if u.guess == "fixed" for lid in u.aux_heads for n in g.losses[lid].head_nodes}
    from fgc.lowering.feedback import feedback_matrices
    return Network(layers, tuple(steps), tuple(losses),
                   tuple(s.id for s in steps if s.kind == "perturb" and s.role == "op"),
                   final, input_id, tuple(g.node(input_id).shape), mean, std,
                   g.meta.get("algorithm"),
                   feedback_matrices(plan, layers, {s.id: s.shape for s in steps}, key, dtype),
                   FrozenLayers(fixed) if fixed else None, tuple(getattr(plan, "pieces", ())))
