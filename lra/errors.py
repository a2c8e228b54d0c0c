"""Errors that carry one clear message for the user: what is wrong and how to fix it.

Entry points catch `UserError` and print its message alone, without a traceback.
"""


class UserError(Exception):
  """Bad input from the user (configuration, arguments, files)."""


class ConfigError(UserError, ValueError):
  """A configuration value is invalid or inconsistent."""


class DataError(UserError):
  """A dataset file is missing or malformed."""


class CheckpointError(UserError):
  """A checkpoint in the workdir cannot be restored."""
