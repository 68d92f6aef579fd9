"""fgc's XLA flags (fgc/xla_flags.py): set for the jaxlib that needs them, never over a
user's own, and the step they exist for comes out finite."""

from __future__ import annotations

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgc import xla_flags
from fgc.learning.estimators import UpdateRule
from fgc.lowering.lower import lower
from fgc.plan.program import load

YNN = "--xla_cpu_experimental_ynn_fusion_type"


@pytest.mark.parametrize("version,before,after", [
    ("0.10.2", "", f"{YNN}=-reduce"),
    ("0.10.2", "--xla_foo=1", f"--xla_foo=1 {YNN}=-reduce"),
    ("0.10.2", f"{YNN}=dot", f"{YNN}=dot"),  # the user's choice stands
    ("0.11.2", "", ""),  # not known to have the flag: XLA would abort on it
])
def test_flags_follow_the_jaxlib_version_and_the_users_own(monkeypatch, version, before, after):
    monkeypatch.setattr(xla_flags.metadata, "version", lambda _: version)
    env = {"XLA_FLAGS": before} if before else {}
    xla_flags.apply(env)
    assert env.get("XLA_FLAGS", "") == after


def test_this_process_runs_with_the_flags():
    if not jax.__version__.startswith("0.10."):
        pytest.skip(f"jaxlib {jax.__version__}: fgc adds no flags for it")
    assert f"{YNN}=-reduce" in os.environ["XLA_FLAGS"]


def test_lg_fg_a_at_batch_512_is_finite():
    """The case the flag is for: with jaxlib 0.10's YNN reduce fusions on, this estimate
    came out NaN in most runs (BENCHMARKS.md §7)."""
    plan = load("specs/mixer-m-1-16.fg").plan("lg-fg-a")
    net = lower(plan, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (512, *net.input_shape))
    y = jnp.arange(512) % 10
    rule = UpdateRule.build(plan)
    grads = eqx.filter_jit(lambda n, k: rule.estimate(n, x, y, k).grads)(net, jax.random.key(3))
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(np.isfinite(np.asarray(a)).all() for a in leaves)
