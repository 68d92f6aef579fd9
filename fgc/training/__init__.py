"""Training: data, the jit step and run loop, checkpoints."""
