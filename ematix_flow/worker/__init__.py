"""``flow-worker``: the Arrow Flight server every machine of the mesh runs."""
