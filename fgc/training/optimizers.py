"""Optimizers per parameter group: one optax transformation for a whole plan.

:func:`make_optimizer` partitions the parameters by group (``optax.partition``); each
group has its optimizer, its learning-rate multiplier under the run's schedule
(:func:`make_schedule`) and weight decay on weights only (:func:`param_group_labels`).
"""

from __future__ import annotations

import functools

import jax
import optax
from jaxtyping import PyTree

from fgc.front.config import Call, TrainConfig
from fgc.lowering.params import is_weight, node_of

if False:  # typing only
    from fgc.plan.program import Plan

__all__ = ["make_optimizer", "make_schedule", "param_group_labels"]


def make_schedule(call: Call, base_lr: float, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """An optax schedule from the spec's ``schedule = ...`` (steps count optimizer steps).

    ``linear(end)`` decays linearly to ``end × base_lr`` over the run;
    ``cosine(warmup_epochs, end)`` warms up linearly then follows a cosine to
    ``end × base_lr``; ``step(every, factor)`` multiplies by ``factor`` every
    ``every`` epochs; ``constant`` keeps ``base_lr``.
    """
    kw = call.as_dict()
    total = max(1, steps_per_epoch * epochs)
    if call.name == "constant":
        return optax.constant_schedule(base_lr)
    if call.name == "linear":
        return optax.linear_schedule(base_lr, base_lr * float(kw.get("end", 0.0)), total)
    if call.name == "cosine":
        warm = int(round(float(kw.get("warmup_epochs", 0)) * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(0.0, base_lr, min(warm, total - 1), total,
                                                  base_lr * float(kw.get("end", 0.0)))
    if call.name == "step":
        every = max(1, int(round(float(kw.get("every", 30)) * steps_per_epoch)))
        return optax.exponential_decay(base_lr, every, float(kw.get("factor", 0.1)), staircase=True)
    raise ValueError(f"unknown schedule `{call.name}`")


def param_group_labels(params: PyTree, plan: Plan, decay_all: bool = False) -> PyTree[str]:
    """``GROUP/decay`` for weights and kernels, ``GROUP/plain`` for biases and norm
    parameters (``decay_all``: every parameter is ``decay``, as torch's SGD does): the
    labels of :func:`make_optimizer`'s ``optax.partition``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: f"{plan.assignment[node_of(path)]}/"
                        f"{'decay' if decay_all or is_weight(path) else 'plain'}", params)


def make_optimizer(plan: Plan, train: TrainConfig, steps_per_epoch: int
                   ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """One optax transformation for every parameter group of a plan.

    Each group gets its optimizer (the group's own or the ``train`` one), its
    learning rate times ``lr_scale`` under the run's schedule, and weight decay
    (the group's or the run's) on weights only, applied to the gradient before
    the optimizer as in the released code.

    Returns:
      ``(transformation, schedules)``: schedules maps group name → learning
      rate as a function of the step, for logging.
    """
    transforms, schedules = {}, {}
    for name, grp in plan.groups.items():
        call = grp.optimizer or train.optimizer
        kw = call.as_dict()
        lr = float(kw.pop("learning_rate", 0.01)) * grp.lr_scale
        sched = make_schedule(train.schedule, lr, steps_per_epoch, train.epochs)
        schedules[name] = sched
        opt = getattr(optax, call.name)(learning_rate=sched, **kw)
        wd = train.weight_decay if grp.weight_decay is None else grp.weight_decay
        transforms[f"{name}/plain"] = opt
        transforms[f"{name}/decay"] = optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
    labels = functools.partial(param_group_labels, plan=plan, decay_all=train.decay_on == "all")
    return optax.partition(transforms, labels), schedules
