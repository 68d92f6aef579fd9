"""Shared pytest configuration."""

import os
import tempfile

import jax

# Many tests compile the same small train steps: keep compiled programs on disk for
# the session so that each is compiled once.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("FGC_TEST_JAX_CACHE",
                                 os.path.join(tempfile.gettempdir(), "fgc-test-jax-cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Strict: an implicit rank promotion (a [B] array broadcast against [B, C] by accident) is an
# error, not a silently wrong broadcast; warnings are errors too (pyproject's filterwarnings).
jax.config.update("jax_numpy_rank_promotion", "raise")



def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/errors/*.err from the current diagnostics")
