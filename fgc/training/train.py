"""Training: the jit-compiled step and the run loop.

The pieces compose without the loop: :func:`fgc.training.prepare.prepare` turns a spec
into a :class:`~fgc.training.prepare.Run` (its optimizer from
:func:`fgc.training.optimizers.make_optimizer`), :func:`make_step` one jit-compiled step (the estimator of
:mod:`fgc.learning.estimators` plus the optax update, buffers donated), and
:func:`train` the whole run with metrics, checkpoints and resume (its loop calls the same
step as a :class:`fgc.training.flat_step.FlatStep`, fed by
:func:`fgc.training.data.prefetch_to_device`).

Example:
    >>> import fgc
    >>> from fgc.training.train import train
    >>> summary = train("specs/mixer-s-1-1.fg", algorithm="lg-fg-a", dataset="mnist",
    ...                 epochs=1, out="runs/s11")                      # doctest: +SKIP
    >>> summary["test_error"]                                           # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from fgc.training import checkpoint, runs
from fgc.training.flat_step import FlatStep
from fgc.training.data import Dataset, iterate_batches, prefetch_to_device
from fgc.training.optimizers import make_optimizer, make_schedule, param_group_labels
from fgc.training.prepare import Run, input_stats, prepare, with_estimator
from fgc.training.views import make_views
from fgc.errors import TrainingError, plural
from fgc.learning.estimators import UpdateRule
from fgc.lowering.lower import Network, count_params, trainable

# prepare's and optimizers' names stay importable from here, where they used to live
__all__ = ["Run", "evaluate", "input_stats", "with_estimator", "make_optimizer", "make_schedule",
           "make_step", "param_group_labels", "prepare", "step_body", "train"]


# --- the step --------------------------------------------------------------------------------

AUGMENT_STREAM = 0x617567  # folded into a step's key for its augmentation ("aug")

def make_step(rule: UpdateRule, tx: optax.GradientTransformation, *, max_traces: int | None = None,
              augment: Callable[[Array, Array], Array] | None = None,
              views: Callable | None = None) -> Callable:
    """The train step ``(net, opt_state, x, labels, key) -> (net, opt_state, losses)``.

    Estimation, local weight gradients, the optax update of the trainable arrays and
    the new buffers (batch-norm running statistics) run as one jit-compiled
    function; the network and optimizer state are donated (updated in place).
    ``max_traces`` makes a retrace an error (``eqx.debug.assert_max_traces``).
    ``augment`` (:func:`fgc.training.augment.make`) transforms the batch first, on the
    device, with randomness folded from the step's key; ``views``
    (:func:`fgc.training.views.make_views`) then makes the augmented views of the batch,
    from its own stream of the step's key.
    """
    step = step_body(rule, tx, augment=augment, views=views)
    if max_traces is not None:
        step = eqx.debug.assert_max_traces(step, max_traces=max_traces)
    return eqx.filter_jit(step, donate="all")


def step_body(rule: UpdateRule, tx: optax.GradientTransformation, *,
              augment: Callable[[Array, Array], Array] | None = None,
              views: Callable | None = None) -> Callable:
    """The train step of :func:`make_step` before it is compiled, for other ways of
    compiling it (:class:`fgc.training.flat_step.FlatStep`, which the run loop uses)."""
    def step(net: Network, opt_state, x: Array, labels: Array, key: Array):
        if augment is not None:  # a stream of its own: the estimator's draws stay as they were
            x = augment(x, jax.random.fold_in(key, AUGMENT_STREAM))
        if views is not None:
            x, labels = views(jax.random.fold_in(key, VIEWS_STREAM), x, labels)
        est = rule.estimate(net, x, labels, key)
        params = eqx.filter(net, trainable(net))
        updates, opt_state = tx.update(est.grads, opt_state, params)
        return eqx.apply_updates(net, updates).with_state(est.state), opt_state, est.losses

    return step


VIEWS_STREAM = 0x7615  # folded into the step's key for the augmentation's draws


@eqx.filter_jit
def _predict(net: Network, x: Array) -> Array:
    return jnp.argmax(net(x), axis=-1)


def evaluate(net: Network, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Classification error in percent over ``(x, y)``, in fixed-size batches (the last
    one padded, so one compilation serves every batch). The network runs in evaluation
    mode (batch norm reads its running statistics), so every example's prediction is
    its own and the padding changes none of them."""
    n = len(x)
    if n == 0:
        return float("nan")
    b = min(batch_size, n)
    wrong = 0
    for i in range(0, n, b):
        xb, yb = x[i:i + b], y[i:i + b]
        k = len(xb)
        if k < b:
            xb = np.concatenate([xb, np.zeros((b - k, *xb.shape[1:]), xb.dtype)])
        pred = np.asarray(_predict(net, jnp.asarray(xb)))[:k]
        wrong += int((pred != yb).sum())
    return 100.0 * wrong / n


# --- a run -----------------------------------------------------------------------------------

def _loss_name(loss_id: str) -> str:
    return loss_id.removeprefix("loss:")


def train(spec, *, out: str | os.PathLike, algorithm: str | None = None,
          dataset: str | Dataset | None = None, data_dir: str | None = None,
          tangents: int | None = None, credit: str | None = None,
          aggregate: str | None = None, chunk: int | None = None, resume: bool = False, steps: int | None = None,
          checkpoint_every: int | str | None = None, progress: bool | None = None,
          eval_train: bool = True, log: Callable[[str], None] | None = None,
          on_step: Callable[[int, int], None] | None = None,
          on_epoch: Callable[[dict], None] | None = None, **overrides) -> dict[str, Any]:
    """Trains a spec and writes ``metrics.jsonl``, ``summary.json`` and checkpoints to ``out``.

    Args:
      spec: spec path or :class:`~fgc.plan.program.Program`.
      out: run directory; created if missing. An existing run there is continued
        with ``resume=True`` and never overwritten otherwise; a non-empty folder
        without a run is refused.
      algorithm, dataset, data_dir, tangents, credit, aggregate, chunk, overrides: as
        :func:`prepare`.
      resume: continue from the newest good checkpoint in ``out`` (mid-epoch too;
        the result is bit-identical to an uninterrupted run). A larger ``epochs``
        extends a finished run (the log says what that does to the schedule).
      steps: stop once the run has made this many optimizer steps in all (a
        checkpoint is written there; ``resume`` continues).
      checkpoint_every: steps (``500``) or a time (``"30s"``, ``"5m"``) between
        checkpoints; default: every tenth of an epoch or minute, whichever is first.
      progress: a progress bar (default: when stderr is a terminal); else one line
        per epoch through ``log``.
      eval_train: measure the training-set error every epoch (a forward pass over
        the training set).
      log: where epoch lines go (default: print).
      on_step: called as ``on_step(epoch, step)`` after every step (for tests and
        tools; raising ``KeyboardInterrupt`` there stops the run like Ctrl-C).
      on_epoch: called with each epoch's metrics row once it is written (e.g. a
        :class:`fgc.tools.tensorboard.TensorBoardWriter`).

    Returns:
      The summary written to ``summary.json``.

    Raises:
      TrainingError: a loss became NaN or infinite (the last good checkpoint stays),
        or ``out`` cannot hold the run.
      CheckpointError: no usable checkpoint, or one from another run.
      DataError, SpecError: bad data or spec.
    """
    log = log or print
    exists = runs.check_out(out)
    out = Path(out)
    if exists and not resume:
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it, or "
                            "choose another --out")
    if steps is not None and (type(steps) is not int or steps < 1):
        raise TrainingError(f"--steps must be a positive integer, got {steps!r}")
    runs.Policy.parse(checkpoint_every, 1)  # a bad --checkpoint-every before any loading
    run = prepare(spec, algorithm=algorithm, dataset=dataset, data_dir=data_dir,
                  tangents=tangents, credit=credit, aggregate=aggregate, chunk=chunk,
                  **overrides)
    cfg, data, spe = run.train, run.data, run.steps_per_epoch
    runs.check_size(run)
    policy = runs.Policy.parse(checkpoint_every, spe)
    ident = runs.identity(run, tangents=tangents, credit=credit, aggregate=aggregate)
    start, done, sums, state = 0, 0, {}, run.init_state()
    if exists:
        found = checkpoint.latest(out, state, log=log, check=lambda meta, where: (
            runs.compare(meta, ident, where), runs.check_position(meta, spe, cfg.epochs, where)))
        if found is not None:
            where, meta, state = found
            start, done, sums = meta["step"], meta["epoch"], dict(meta.get("sums", {}))
            note = runs.extension_note(run, meta.get("epochs", cfg.epochs), start)
            log(note or f"resuming {out} at step {start:,} of {cfg.epochs * spe:,}")
        else:
            runs.compare_marker(out, ident)
            log(f"{out} has no checkpoint yet; starting at step 0")
    history = runs.truncate_metrics(out / runs.METRICS, done)
    runs.make_out(out, ident)
    stop = cfg.epochs * spe if steps is None else min(steps, cfg.epochs * spe)
    net, opt_state = state
    ckpt_path = out / checkpoint.NAME

    def save(epochs_done: int) -> None:
        checkpoint.save(ckpt_path, {"run": ident, "spec": str(run.program.path),
                                    "epoch": epochs_done, "step": global_step,
                                    "epochs": cfg.epochs, "sums": sums,
                                    "key": np.asarray(jax.random.key_data(run.key)).tolist()},
                        step_fn.tree(arrays))
        clock.reset(global_step)

    from fgc.training.augment import make as make_augment
    # the loop holds the state as a flat list of arrays (FlatStep: no pytree work per step)
    step_fn = FlatStep(step_body(run.rule, run.tx, augment=make_augment(cfg.augment),
                                 views=make_views(cfg.views, cfg.view_augment)),
                       net, opt_state, max_traces=1, schedules=run.rule.schedules())
    arrays = step_fn.arrays(net, opt_state)
    del net, opt_state  # donated by the first step: only `arrays` is the state from here on
    show_bar = sys.stderr.isatty() if progress is None else progress
    algo = cfg.algorithm or "bp"
    if start < stop:
        log(f"fgc train: {run.program.graph.meta.get('title') or run.program.path} · {algo} · "
            f"{data.name} ({len(data.x_train)} train / {len(data.x_test)} test, {data.source}) · "
            f"{plural(cfg.epochs, 'epoch')} × {plural(spe, 'step')} of {cfg.batch_size}")
        for line in run.rule.describe():
            log(f"  {line}")
        for w in run.plan.warnings:
            log(w.render(run.program.spec.source))
    elif start == cfg.epochs * spe:
        log(f"{out}: the run is finished ({plural(cfg.epochs, 'epoch')}); pass a larger --epochs "
            "to extend it")
    else:
        log(f"{out}: already at step {start:,} (--steps {steps:,})")

    # the loss `__call__` reads out (the classifier on `output`, fgc.lowering.lower.lower)
    final_id = run.net.final_loss if any(l.final for l in run.net.loss_heads) else None
    wall0 = time.perf_counter()
    compile_seconds = None
    global_step = start
    clock = policy.clock(start)
    for epoch in range(start // spe, cfg.epochs if start < stop else 0):
        skip = global_step - epoch * spe
        sums = sums if skip else {}
        t0 = time.perf_counter()
        pending: list[tuple[int, dict[str, Array]]] = []
        timed_images = 0
        bar = _bar(show_bar, spe, skip, f"epoch {epoch + 1}/{cfg.epochs}")
        batches = iterate_batches(data.x_train, data.y_train, cfg.batch_size, seed=cfg.seed,
                                  epoch=epoch, shuffle=True, drop_last=True, flip=cfg.flip)
        halted = False
        # the next batch is assembled and copied to the device while this one's step runs
        on_device = prefetch_to_device(itertools.islice(batches, skip, None))
        for i, (xb, yb) in enumerate(on_device, start=skip):
            ts = time.perf_counter()
            key = jax.random.fold_in(run.key, global_step + 1)
            arrays, losses = step_fn(arrays, xb, yb, key)
            global_step += 1
            pending.append((i, losses))
            if compile_seconds is None:
                jax.block_until_ready(losses)
                compile_seconds = time.perf_counter() - ts
            else:
                timed_images += len(xb)
            last = i == spe - 1
            halted = global_step >= stop and not last
            ckpt_now = not last and (halted or clock.due(global_step))
            if len(pending) >= 50 or last or ckpt_now:
                sums = _check_finite(pending, sums, epoch, ckpt_path)
                if bar is not None:
                    bar.update(len(pending))
                    bar.set_postfix({_loss_name(k): f"{float(v) / (i + 1):.3f}" for k, v in
                                     list(sums.items())[:3]})
                pending = []
            if ckpt_now:
                save(epoch)
            if on_step is not None:
                on_step(epoch, i)
            if halted:
                break
        if bar is not None:
            bar.close()
        if halted:
            log(f"stopped at step {global_step:,} (--steps {steps:,}); continue with --resume")
            break
        jax.block_until_ready(arrays)
        net = step_fn.tree(arrays)[0]
        train_seconds = time.perf_counter() - t0
        timed_seconds = train_seconds - (compile_seconds if epoch == start // spe else 0.0)
        te = time.perf_counter()
        test_error = evaluate(net, data.x_test, data.y_test, cfg.eval_batch_size)
        train_error = evaluate(net, data.x_train, data.y_train, cfg.eval_batch_size) \
            if eval_train else None
        eval_seconds = time.perf_counter() - te
        mean_losses = {_loss_name(k): float(v) / spe for k, v in sums.items()}
        train_loss = mean_losses.get(_loss_name(final_id)) if final_id else \
            float(np.mean(list(mean_losses.values())))
        row = {
            "epoch": epoch + 1, "step": global_step, "train_loss": train_loss,
            "losses": mean_losses, "test_error": test_error, "train_error": train_error,
            "lr": {g: float(s(global_step - 1)) for g, s in run.schedules.items()},
            "images_per_second": timed_images / timed_seconds if timed_seconds > 0 else None,
            "seconds": train_seconds, "eval_seconds": eval_seconds,
        }
        history.append(row)
        runs.append_metrics(out / runs.METRICS, row)
        if on_epoch is not None:
            on_epoch(row)
        save(epoch + 1)
        # one line per epoch, also under the progress bar (which is cleared)
        log(f"epoch {epoch + 1:>4}/{cfg.epochs}  loss {train_loss:.4f}  test err "
            f"{test_error:6.2f}%" + (f"  train err {train_error:6.2f}%" if train_error is not None
                                     else "") +
            (f"  {row['images_per_second']:,.0f} img/s" if row["images_per_second"] else "")
            + f"  {train_seconds:.1f}s")
        if global_step >= stop:
            break
    summary = _summary(run, history, time.perf_counter() - wall0, compile_seconds)
    summary.update(steps=global_step, finished=global_step == cfg.epochs * spe,
                   xla_options=step_fn.options)  # the schedule kept (blockwise.schedules)
    runs.write_json(out / runs.SUMMARY, summary)
    return summary


def _bar(show: bool, total: int, initial: int, desc: str):
    if not show:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

def _check_finite(pending, sums, epoch, ckpt):
    """Adds the pending steps' losses to the running sums; stops on NaN/Inf."""
    host = jax.device_get([l for _, l in pending])
    for (i, _), losses in zip(pending, host):
        for k, v in losses.items():
            if not math.isfinite(float(v)):
                kept = (f"the last good checkpoint ({ckpt}) is kept; " if ckpt and ckpt.exists()
                        else "no checkpoint was written yet; ")
                raise TrainingError(
                    f"loss `{_loss_name(k)}` became {float(v)} at epoch {epoch + 1}, step {i + 1}; "
                    f"training stopped. {kept}lower the learning rate (optimizer = ...) or check "
                    "the data for NaN/Inf")
            sums[k] = sums.get(k, 0.0) + float(v)
    return sums


def _summary(run: Run, history: list[dict], wall: float, compile_seconds) -> dict[str, Any]:
    last = history[-1] if history else {}
    ips = [r["images_per_second"] for r in history if r.get("images_per_second")]
    return {
        "algorithm": run.train.algorithm or "bp",
        "spec": str(run.program.path),
        "spec_name": run.program.graph.meta.get("title"),
        "dataset": run.data.name,
        "epochs": last.get("epoch", 0),
        "batch_size": run.train.batch_size,
        "seed": run.train.seed,
        "test_error": last.get("test_error"),
        "train_error": last.get("train_error"),
        "best_test_error": min((r["test_error"] for r in history), default=None),
        "train_loss": last.get("train_loss"),
        "images_per_second": float(np.median(ips)) if ips else None,
        "wall_seconds": wall,
        "compile_seconds": compile_seconds,
        "parameters": count_params(run.net),
        "estimator": run.rule.describe(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }
