"""Lowering: a plan becomes plain Equinox modules (layers, the network, fused replicated losses)."""
