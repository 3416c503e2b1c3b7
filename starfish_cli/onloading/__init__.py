"""Layer-by-layer onloading: causal LMs larger than memory, one decoder layer at a time."""
