"""Test-wide settings: simulated CPU devices and strict numpy rank promotion."""

import os

# Four simulated CPU devices, for the data-parallel tests; set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402  (after the device count is set)

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_disable_most_optimizations", True)
