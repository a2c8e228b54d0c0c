"""Exact, linear-memory Longformer attention in JAX/Flax, and the LRA experiments using it."""
