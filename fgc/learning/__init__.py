"""Learning rules: how each parameter group turns the losses into an update."""
