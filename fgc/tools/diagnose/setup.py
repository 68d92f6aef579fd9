"""`fgc diagnose`'s inputs: its settings checked, the algorithm planned with weight and with
activity perturbation, and the data it measures on."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np

from fgc.errors import SpecError
from fgc.tools.diagnose.base import KINDS, DiagnoseError

# Forward-gradient presets by (target, greedy): what to suggest for a backprop algorithm.
_FG_PRESETS = {("global", False): ("fg-a", "fg-w"), ("local", True): ("lg-fg-a", "lg-fg-w")}


# --- settings ----------------------------------------------------------------------------------

def _check_settings(tangents, batches, draws, batch_size, warmup_steps, seed) -> tuple[int, ...]:
    try:
        ks = tuple(tangents)
    except TypeError:
        ks = (tangents,)
    if not ks:
        raise DiagnoseError("no tangent counts given; pass e.g. --tangents 1,4,16,64")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad:
        raise DiagnoseError(f"tangent counts must be positive integers, got {bad[0]!r}; "
                            "pass e.g. --tangents 1,4,16,64")
    for name, v, low in (("batches", batches, 1), ("draws", draws, 2),
                         ("warmup_steps", warmup_steps, 0), ("seed", seed, 0)):
        if v is None and name == "seed":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            why = " (a variance needs at least two draws)" if name == "draws" else ""
            raise DiagnoseError(f"{name} must be an integer ≥ {low}{why}, got {v!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise DiagnoseError(f"batch_size must be a positive integer, got {batch_size!r}")
    return tuple(sorted({int(k) for k in ks}))


def _is_forward(plan) -> bool:
    """Whether some backbone parameter learns by a forward-gradient estimator."""
    g = plan.graph
    return any(plan.estimator_of(grp).kind in ("forward", "project")
               for n, grp in plan.assignment.items() if g.node(n).role == "op")


def _not_forward_error(plan, name: str) -> DiagnoseError:
    algo = plan.algorithm
    presets = _FG_PRESETS.get((algo.target, algo.greedy))
    if presets:
        hint = (f"for the same target, try `--algorithm {presets[0]}` (activity perturbation) or "
                f"`{presets[1]}` (weight perturbation)")
    else:
        hint = (f"define one with the same target in the spec, e.g. `algorithm my-fg {{ target = "
                f"{algo.target}  greedy = {str(algo.greedy).lower()}  estimator = "
                "forward(perturb = activity) }`")
    return DiagnoseError(
        f"`{name}` trains every backbone parameter by backprop: its estimate is the exact "
        "gradient (cosine 1, variance 0), so there is nothing to diagnose. `fgc diagnose` "
        f"measures forward-gradient estimators; {hint}")


def _variant_plans(prog, plan, name: str) -> tuple[dict, dict]:
    """The algorithm with weight and with activity perturbation (same target, greediness
    and noise), planned through the program so its checks (E506, E507) apply; a kind the
    spec cannot run maps to the reason in the second dict."""
    from fgc.front.config import Algorithm
    base = plan.algorithm
    plans, missing = {}, {}
    for kind in KINDS:
        if base.estimator.kind == "project":  # the same projection in the other space
            gran = base.estimator.granularity
            est = replace(base.estimator, space=kind, granularity="block" if
                          kind == "activity" and gran == "tensor" else gran)
        else:
            est = replace(base.estimator, kind="forward", perturb=kind, tangents=1)
        algo = Algorithm(f"{name}[{kind}]", base.target, base.greedy, est, source="fgc diagnose")
        variant = replace(prog, algorithms={**prog.algorithms, algo.name: algo})
        try:
            plans[kind] = variant.plan(algo.name)
        except SpecError as e:
            missing[kind] = "; ".join(d.message for d in e.diagnostics)
    return plans, missing


def target_plan(prog, plan):
    """The plan whose objective's exact gradient is a projection's target: ``bp`` for a
    global target, ``lg-bp`` (each block its own losses) for a local one; None for
    ``above``, which no backprop preset computes. Other algorithms: the plan itself."""
    est = plan.algorithm.estimator
    if est.kind != "project":
        return plan
    return {"global": prog.plan("bp"), "local": prog.plan("lg-bp")}.get(est.target)


# --- data ---------------------------------------------------------------------------------------

def _dataset(prog, dataset, data_dir, batch_size: int, batches: int, seed: int):
    from fgc.training.data import Dataset, load_dataset, synthetic_dataset
    from fgc.errors import DataError
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, str) and dataset.lower() == "synthetic":
        meta = prog.graph.meta
        shape = tuple(meta["input_shape"])
        classes = int(meta.get("classes") or 10)
        return synthetic_dataset(n_train=max(512, batch_size * batches), n_test=classes,
                                 image_shape=shape, num_classes=classes, seed=seed)
    name = dataset or prog.train.dataset
    if name is None:
        raise DataError(f"no dataset: {prog.path} names none in its train section; pass "
                        "--dataset mnist, cifar10, an .npz path, or synthetic (random data of "
                        "the spec's input shape, for offline use)")
    return load_dataset(name, data_dir)


def _batch_stream(data, batch_size: int, seed: int, flip: bool) -> Iterator[tuple]:
    """Training batches, epoch after epoch (a small dataset wraps around)."""
    from fgc.training.data import iterate_batches
    epoch = 0
    while True:
        got = False
        for xb, yb in iterate_batches(data.x_train, data.y_train, batch_size, seed=seed,
                                      epoch=epoch, shuffle=True, drop_last=True, flip=flip):
            got = True
            yield xb, yb
        if not got:  # prepare() has checked there is one batch; be safe anyway
            return
        epoch += 1


def _plan(prog, algorithm: str | None, credit: str | None):
    """``(name, plan)`` of the algorithm to diagnose, refused unless it estimates forward
    gradients, with the credit rule asked for."""
    from fgc.training.train import with_estimator
    name = algorithm or prog.train.algorithm
    if name is None:
        raise DiagnoseError(f"{prog.path} names no algorithm in its train section; pass "
                            "--algorithm, e.g. --algorithm lg-fg-a")
    plan = prog.plan(name)  # SpecError (with a suggestion) for an unknown name
    if not _is_forward(plan):
        raise _not_forward_error(plan, name)
    if plan.algorithm.estimator.kind not in ("forward", "project"):
        raise DiagnoseError(f"`{name}` uses backprop and only some parameter groups set a "
                            "forward estimator; diagnose varies the algorithm's estimator, so "
                            "give the algorithm a forward(...) estimator instead")
    if credit is not None and plan.algorithm.estimator.kind == "project":
        raise DiagnoseError(f"`{name}` projects onto a guess and has no credit rule; drop --credit")
    if credit is not None:
        try:
            plan = with_estimator(plan, credit=credit)
        except ValueError as e:
            raise DiagnoseError(f"{e}; pass --credit exact or --credit ignore_norm") from None
    return name, plan
