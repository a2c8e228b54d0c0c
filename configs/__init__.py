"""Task configs: one file per task (`--config=configs/<task>.py:<arguments>`), built from the
helpers in `configs.common`; loading one imports ml_collections, never JAX."""
