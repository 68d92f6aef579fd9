"""From a spec to a :class:`Run`: the data loaded and checked against the spec, the
network lowered, its update rule built and its optimizer made, before any loop starts.

:func:`with_estimator` is how the command line changes a plan's forward-gradient
estimators (``--tangents``, ``--credit``, ``--aggregate``, ``--chunk``) for ``train``,
``verify`` and ``diagnose`` alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import equinox as eqx
import jax
import optax
from jaxtyping import Array

from fgc.errors import DataError, TrainingError
from fgc.front.config import TrainConfig
from fgc.learning.estimators import UpdateRule
from fgc.lowering.lower import Network, lower, trainable
from fgc.lowering.modules import with_precision
from fgc.training.data import Dataset, load_dataset, num_batches
from fgc.training.optimizers import make_optimizer

if False:  # typing only
    from fgc.plan.program import Plan, Program

__all__ = ["Run", "input_stats", "prepare", "with_estimator"]


@dataclass
class Run:
    """Everything a training run is made of, before the loop starts."""

    program: Program
    plan: Plan
    train: TrainConfig
    data: Dataset
    net: Network
    rule: UpdateRule
    tx: optax.GradientTransformation
    schedules: dict[str, optax.Schedule]
    steps_per_epoch: int
    key: Array

    def init_state(self):
        return self.net, self.tx.init(eqx.filter(self.net, trainable(self.net)))


def prepare(spec, *, algorithm: str | None = None, dataset: str | Dataset | None = None,
            data_dir: str | None = None, tangents: int | None = None,
            credit: str | None = None, aggregate: str | None = None,
            chunk: int | None = None, **overrides) -> Run:
    """Loads the spec and the data and builds the network, update rule and optimizer.

    Args:
      spec: a spec path or a loaded :class:`~fgc.plan.program.Program`.
      algorithm: preset or spec algorithm name (default: the spec's ``train.algorithm``).
      dataset: ``mnist``, ``cifar10``, an ``.npz`` path or a :class:`~fgc.training.data.Dataset`
        (default: the spec's ``train.dataset``).
      data_dir: where to look for the built-in datasets.
      tangents: tangents per step for every forward-gradient estimator (default:
        the algorithm's).
      credit: credit rule of every forward-gradient estimator, ``exact`` or
        ``ignore_norm`` (default: the algorithm's).
      aggregate: how every forward-gradient estimator combines its tangents, a
        registered aggregation (``mean``, ``sum``, ``orthogonal``; default: the algorithm's).
      chunk: tangents every forward-gradient estimator evaluates at once (default: the
        algorithm's, else all).
      overrides: any :class:`~fgc.front.config.TrainConfig` field (``epochs``, ``batch_size``,
        ``seed``, ...); ``None`` values are ignored.
    """
    from fgc.plan.program import load
    prog = load(spec) if isinstance(spec, (str, os.PathLike)) else spec
    cfg = replace(prog.train, **{k: v for k, v in overrides.items() if v is not None})
    if algorithm is not None:
        cfg = replace(cfg, algorithm=algorithm)
    plan = prog.plan(cfg.algorithm)
    if any(v is not None for v in (tangents, credit, aggregate, chunk)):
        plan = with_estimator(plan, tangents=tangents, credit=credit, aggregate=aggregate,
                              chunk=chunk)
    if isinstance(dataset, Dataset):
        data = dataset
    else:
        name = dataset or cfg.dataset
        if name is None:
            raise DataError("no dataset: the spec's train section names none; pass --dataset "
                            "mnist, cifar10 or a path to an .npz file")
        data = load_dataset(name, data_dir)
    cfg = replace(cfg, dataset=data.name)
    _check_data(prog, data)
    if cfg.augment and data.x_train.ndim != 4:
        raise DataError(f"augment = [...] needs images [N, H, W, C], got inputs of shape "
                        f"{data.x_train.shape[1:]}")
    from fgc.graph.loss_kinds import view_losses
    views = view_losses(prog.graph)
    if views and cfg.batch_size < 2:  # the spec's own batch_size is checked when loaded
        raise TrainingError(f"loss `{views[0].name}` is `{views[0].kind}`: a batch of "
                            f"{cfg.batch_size} gives it the two views of one example and no "
                            "other to tell them from, so it is constant; pass --batch-size 2 "
                            "or more")
    steps = num_batches(len(data.x_train), cfg.batch_size, drop_last=True)
    if steps == 0:
        raise DataError(f"the training set has {len(data.x_train)} examples, fewer than one "
                        f"batch of {cfg.batch_size}; lower --batch-size")
    key = jax.random.key(cfg.seed)
    net = lower(plan, jax.random.fold_in(key, 0), stats=input_stats(prog, data))
    if cfg.precision != "default":  # how products are taken; the parameters stay float32
        net = with_precision(net, cfg.precision)
    rule = UpdateRule.build(plan, net)
    tx, schedules = make_optimizer(plan, cfg, steps)
    return Run(prog, plan, cfg, data, net, rule, tx, schedules, steps, key)


def input_stats(prog: Program, data: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """How the network normalises its inputs: with the statistics of the data it trains
    on, unless the spec says ``normalize = none`` (then only uint8 is scaled to [0, 1])."""
    if prog.graph.meta.get("normalize") == "none":
        c = len(data.mean)
        return (0.0,) * c, (1.0,) * c
    return data.mean, data.std


def with_estimator(plan: Plan, *, tangents: int | None = None, credit: str | None = None,
                   aggregate: str | None = None, chunk: int | None = None) -> Plan:
    """The plan with every forward-gradient estimator changed: ``tangents`` per step,
    ``credit`` rule (:data:`fgc.front.config.CREDIT`), ``aggregate`` (a registered
    aggregation, :mod:`fgc.learning.aggregate`), ``chunk`` (tangents evaluated at once,
    at most K; for ``project(...)``, the per-example jvps run at once); ``None`` keeps the
    algorithm's."""
    from fgc.front.config import CREDIT, aggregations
    if tangents is not None and tangents < 1:
        raise ValueError(f"tangents must be a positive integer, got {tangents}")
    if credit is not None and credit not in CREDIT:
        raise ValueError(f"credit must be one of {', '.join(CREDIT)}, got {credit!r}")
    if aggregate is not None and aggregate not in aggregations():
        raise ValueError(f"aggregate must be one of {', '.join(aggregations())}, got "
                         f"{aggregate!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    changes = {k: v for k, v in (("tangents", tangents), ("credit", credit),
                                 ("aggregate", aggregate), ("chunk", chunk)) if v is not None}
    kinds = {plan.estimator_of(g).kind for g in set(plan.assignment.values())}
    # A projection has a chunk of its own (per-example jvps at once), nothing else here.
    unused = [k for k in changes if "forward" not in kinds
              and not (k == "chunk" and "project" in kinds)]
    if unused:
        flags = " and ".join(f"--{k}" for k in unused)
        how = ("projects onto gradient guesses (project(...): one guess per step, no credit "
               "rule)" if "project" in kinds
               else "trains every parameter by backprop or feedback alignment")
        raise TrainingError(f"{flags} set{'s' if len(unused) == 1 else ''} the forward-gradient "
                            f"estimator, but algorithm `{plan.graph.meta.get('algorithm')}` {how}; "
                            "drop the flag or pick a forward-gradient algorithm "
                            "(e.g. --algorithm lg-fg-a)")

    def fix(est):
        if est is not None and est.kind == "project" and chunk is not None:
            return replace(est, chunk=chunk)
        if est is None or est.kind != "forward":
            return est
        new = replace(est, **changes)
        if new.chunk is not None and new.chunk > new.tangents:
            raise TrainingError(f"chunk {new.chunk} is more than the {new.tangents} "
                                f"tangent{'s' if new.tangents != 1 else ''} of `{est.describe()}`"
                                f"; pass --chunk between 1 and {new.tangents} (or more "
                                "--tangents)")
        return new

    groups = {name: replace(g, estimator=fix(g.estimator)) for name, g in plan.groups.items()}
    return replace(plan, algorithm=replace(plan.algorithm, estimator=fix(plan.algorithm.estimator)),
                   groups=groups)


def _check_data(prog: Program, data: Dataset) -> None:
    shape = tuple(prog.graph.meta["input_shape"])
    where = f"{prog.path}"
    if data.image_shape != shape:
        raise DataError(f"{data.name} ({data.source}) has examples of shape "
                        f"{list(data.image_shape)}, but {where} declares input "
                        f"{list(shape)}; use a spec for this dataset or fix `input ... = image(...)`")
    classes = prog.graph.meta.get("classes")
    if classes is not None and data.num_classes > classes:
        raise DataError(f"{data.name} has {data.num_classes} classes but {where} declares "
                        f"classes = {classes}")
