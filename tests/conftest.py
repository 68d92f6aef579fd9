"""Shared pytest configuration."""

import os
import tempfile

# The tests' programs are tiny: compiling them is most of the suite's time, and LLVM's
# optimisation passes most of compiling (2.4x less CPU for the aggregation tests without
# them). Set before jax starts its backend; a user's own XLA_FLAGS come first.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true"]))

import fgc  # noqa: E402,F401  (its XLA flags, fgc/xla_flags.py, before jax's backend starts)
import jax  # noqa: E402
import pytest

# Many tests compile the same small train steps: keep compiled programs on disk for
# the session so that each is compiled once.
# One cache per pytest-xdist worker: concurrent writers to one cache have crashed jax's
# cache write (BENCHMARKS.md §6).
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("FGC_TEST_JAX_CACHE",
                                 os.path.join(tempfile.gettempdir(), "fgc-test-jax-cache"))
                  + "-" + os.environ.get("PYTEST_XDIST_WORKER", "main"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Strict: an implicit rank promotion (a [B] array broadcast against [B, C] by accident) is an
# error, not a silently wrong broadcast; warnings are errors too (pyproject's filterwarnings).
jax.config.update("jax_numpy_rank_promotion", "raise")



def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` tests run only with FGC_SLOW=1: the default suite must stay under
    10 minutes on 2 cores; each slow test has a faster sibling that runs by default."""
    if os.environ.get("FGC_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set FGC_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/errors/*.err from the current diagnostics")
