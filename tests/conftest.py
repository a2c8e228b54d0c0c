"""Test-wide settings: simulated CPU devices and strict numpy rank promotion."""

import os

# Four simulated CPU devices, for the data-parallel tests; set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# One compilation cache for the suite's workers and the entry points they start (which
# inherit the environment): the tests compile the same tiny models many times over.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402  (after the device count is set)

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_disable_most_optimizations", True)
