"""Planning: an algorithm applied to a checked graph (stop edges, groups, the credit map)."""
