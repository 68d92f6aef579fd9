"""XLA flags fgc sets before jax starts its backend (a user's own ``XLA_FLAGS`` win).

jaxlib 0.10's XLA:CPU miscompiles some of fgc's programs in its YNNPACK *reduce* fusions:
LG-FG-A on LocalMixer M/1/16 at batch 512, or 8 vmapped draws of it at batch 64 (``fgc
diagnose``), came out NaN in most runs; with the reduce fusions removed from the default
set (``-reduce``) it was finite every time, and with the dot or elementwise ones removed
instead it was not (BENCHMARKS.md §7). Removing every YNN fusion type also fixes it but
makes M/8/16's step about 1.4× slower; removing only ``reduce`` keeps the rest. The flag
is set only for the jaxlib versions known to have it: XLA aborts on a flag it does not know.
"""

from __future__ import annotations

import os
from importlib import metadata

__all__ = ["apply"]

# jaxlib release prefix -> flags fgc adds for it.
FLAGS = {"0.10.": ("--xla_cpu_experimental_ynn_fusion_type=-reduce",)}


def apply(environ=os.environ) -> tuple[str, ...]:
    """Adds the flags for the installed jaxlib to ``XLA_FLAGS`` (those the user has not
    set either way); returns the ones added. Has no effect once jax's backend is up."""
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ()
    current = environ.get("XLA_FLAGS", "")
    added = tuple(f for prefix, flags in FLAGS.items() if version.startswith(prefix)
                  for f in flags if f.split("=")[0] not in current)
    if added:
        environ["XLA_FLAGS"] = " ".join(filter(None, [current, *added]))
    return added
