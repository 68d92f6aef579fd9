"""Lowering: a plan becomes plain Equinox modules (layers, the network, fused replicated losses)."""

# Importing the layer modules fills the registry (fgc.lowering.modules.LAYERS).
from fgc.lowering import modules, simple  # noqa: E402,F401
