"""Running absl entry points: one clear line for every mistake, and a quiet terminal.

Errors. Flag and config problems (a config file that does not exist, an unknown attention,
a typo in a `--config.` override, an override under a section the config lacks, a bad
value) and `lra.errors.UserError` raised by the program print `error: <message>` on stderr
and exit with status 2. Their full cause (traceback and chained errors) is kept: it goes to
the log file of `log_to_file`, and with `--verbosity` (any value) to stderr as well, above
the line.

Logging. After `log_to_file(path)`, every log record at absl's verbosity goes to `path`,
while the terminal shows only the project's own absl records (those logged with
`absl.logging` from the `lra` and `experiments` packages: INFO as the bare message on
stdout, warnings and errors prefixed) and other libraries' warnings and errors (on stderr,
in absl's format); other libraries' INFO lines (orbax, grain, jax) and the project's
details, logged with the standard `logging` module (such as the reads a failed restore left
pending, `lra.checkpointing`), are in the file alone. `--verbosity` on the command line
brings back absl's own terminal logging: every record at that verbosity, on stderr.
"""

import difflib
import glob
import logging
import os
import re
import sys
import traceback
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_dict
from ml_collections.config_flags import config_flags

from experiments.bench import harness
import lra
from lra import errors

# --verbosity / -v, with a value or followed by one.
_VERBOSITY_ARG = re.compile(r"^--?(?:v|verbosity)(?:=|$)")
# Folders whose log records are the project's own.
_PROJECT_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (__file__, lra.__file__))
# Writes the causes of the errors turned into one line; to the log file only.
_CAUSES = logging.getLogger("experiments.cli.causes")
_CAUSES.propagate = False


def _one_line(error: BaseException) -> str:
  # A KeyError's str() is the repr of its key.
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip()
  matches = [harness.ERROR_LINE.match(line) for line in text.splitlines()]
  matches = [m for m in matches if m]
  message = matches[-1].group(2) if matches else text.splitlines()[-1] if text else repr(error)
  return message.strip()


def _fail(error: BaseException, message: str, argv: list[str]) -> None:
  """Prints `error: message` (after the traceback with --verbosity), logs the cause, exits."""
  if any(_VERBOSITY_ARG.match(arg) for arg in argv[1:]):
    traceback.print_exception(error, file=sys.stderr)
  if _CAUSES.handlers:
    _CAUSES.error("error: %s", message, exc_info=error)
    if error.__cause__ is not None:
      message += f" (the full error is in {_CAUSES.handlers[0].baseFilename})"
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_flag_values(argv: list[str]) -> dict[str, str]:
  """`--name=value` of every config-file flag given in `argv`, by flag name."""
  values = {}
  for i, arg in enumerate(argv[1:], start=1):
    name, equals, value = arg.lstrip("-").partition("=")
    if not arg.startswith("-") or name not in flags.FLAGS:
      continue
    if not isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser):
      continue
    if not equals and i + 1 < len(argv):
      value = argv[i + 1]
    values[name] = value
  return values


def _is_config_file(path: str) -> bool:
  """Whether `path` defines `get_config` (a config, not a module of helpers)."""
  with open(path) as f:
    return "def get_config" in f.read()


def _missing_config_file(name: str, value: str) -> str | None:
  """The message for a `--name=path[:arg]` whose file does not exist, else None."""
  path = value.partition(":")[0]
  if os.path.isfile(path):
    return None
  folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
  choices = sorted(filter(_is_config_file, glob.glob(os.path.join(folder, "*.py"))))
  where = (f"the config files in {folder.rstrip('/')}/ are: {', '.join(choices)}" if choices
           else f"paths are relative to the current folder, {os.getcwd()}")
  problem = "is a folder, not a config file" if os.path.isdir(path) else "not found"
  return f"config file {path} {problem} (--{name}={value}); {where}"


def _sections(config, prefix: str) -> list[str]:
  """Dotted names of every section (nested ConfigDict) of `config`."""
  names = []
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      names += [f"{prefix}.{key}", *_sections(value, f"{prefix}.{key}")]
  return names


def _missing_field(name: str, config, argv: list[str]) -> str | None:
  """The message for the first `--name.a.b=...` override whose path `config` lacks."""
  for arg in argv[1:]:
    match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if not match:
      continue
    override = match.group(1)
    node, path = config, override.split(".")
    for depth, key in enumerate(path):
      parent = ".".join([name, *path[:depth]])
      if not isinstance(node, config_dict.ConfigDict):
        return f"{parent} is a value, not a section (--{name}.{override})"
      if key not in node:
        if depth == len(path) - 1:
          close = difflib.get_close_matches(key, list(node.keys()), n=1)
          hint = f"; did you mean {close[0]!r}?" if close else ""
          return f"no such config field {key!r} in {parent} (--{name}.{override}){hint}"
        sections = _sections(config, name)
        same_name = [s for s in sections if s.endswith(f".{key}")]
        hint = (f"; did you mean --{same_name[0]}.{'.'.join(path[depth + 1:])}?"
                if same_name else "")
        return (f"{parent} has no section {key!r} (--{name}.{override}); the sections are: "
                f"{', '.join(sections)}{hint}")
      node = node[key]
  return None


def _is_missing_field_error(error: BaseException) -> bool:
  """Whether `error` is ml_collections' error for an override of a field that is not there."""
  frames = traceback.extract_tb(error.__traceback__)
  return isinstance(error, (AttributeError, KeyError)) and any(
      frame.filename.endswith(os.path.join("config_flags", "config_path.py"))
      for frame in frames)


def _parse_flags(argv: list[str]) -> list[str]:
  config_values = _config_flag_values(argv)
  for name, value in config_values.items():
    message = _missing_config_file(name, value)
    if message:
      _fail(FileNotFoundError(message), message, argv)
  try:
    remaining = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = None
    if _is_missing_field_error(e):
      for name, value in config_values.items():
        config = flags.FLAGS[name].parser.parse(value)
        message = message or _missing_field(name, config, argv)
    if message is None:
      message = _one_line(e)
      if isinstance(e, (AttributeError, KeyError)):
        message = f"{type(e).__name__}: {message}"
    _fail(e, message, argv)
  for name in config_values:
    config = flags.FLAGS[name].value
    if not isinstance(config, config_dict.ConfigDict):
      try:  # a config file that failed to load raises that failure on any use
        config.lock()
      except OSError as e:
        _fail(e, f"--{name}: {_one_line(e)}", argv)
  return remaining


def make_workdir(path: str) -> None:
  """Creates the folder of a run, or raises `UserError` naming what is in the way."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.UserError(
        f"--workdir={path} is a file, not a folder; pass a new folder (it is created) or "
        f"the folder of a run to resume it")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f"--workdir={path} cannot be created: {e.strerror}") from e


def log_to_file(path: str) -> None:
  """Sends all logging to `path` and keeps the terminal to the project's lines (module
  docstring)."""
  file_handler = logging.FileHandler(path)
  file_handler.setFormatter(absl_logging.PythonFormatter())
  logging.root.addHandler(file_handler)
  _CAUSES.addHandler(file_handler)
  if flags.FLAGS["verbosity"].present:
    return
  absl_logging.get_absl_handler().addFilter(
      lambda record: not _is_project(record) and record.levelno >= logging.WARNING)
  terminal = logging.StreamHandler(sys.stdout)
  terminal.addFilter(lambda record: _is_project(record) and record.name == "absl")
  terminal.setFormatter(_ProjectFormatter())
  logging.root.addHandler(terminal)


def log_to_run(workdir: str, name: str) -> None:
  """`log_to_file(<workdir>/<name>)`, for a command that reads a training run's workdir."""
  if not os.path.isdir(workdir):
    raise errors.UserError(
        f"--workdir={workdir} is not a folder: give the workdir of a training run")
  log_to_file(os.path.join(workdir, name))


def quiet() -> None:
  """Keeps the terminal to warnings and errors: a process other than the first of a run on
  several processes, which writes no log file."""
  absl_logging.set_verbosity(absl_logging.WARNING)


# The flags of a launch on several processes: the fields of `lra.distributed.Launch`.
LAUNCH_FLAGS = ("distributed", "coordinator_address", "num_processes", "process_id",
                "coordinator_timeout_s")


def define_launch_flags() -> None:
  """Defines the flags of a launch on several processes, one per host (docs/multihost.md)."""
  flags.DEFINE_bool("distributed", False,
                    "Start JAX's runtime of several processes where neither the flags below "
                    "nor the cluster's variables say so; JAX finds the processes (e.g. on a "
                    "TPU pod slice).")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, which every process can reach; with "
                      "--num_processes and --process_id on each host.")
  flags.DEFINE_integer("num_processes", None, "Processes of the run, one per host.",
                       lower_bound=1)
  flags.DEFINE_integer("process_id", None, "This process's id, 0 .. num_processes - 1.",
                       lower_bound=0)
  flags.DEFINE_integer("coordinator_timeout_s", 300,
                       "Seconds to wait for the coordinator and the other processes.",
                       lower_bound=1)


def launch():
  """The `lra.distributed.Launch` of the launch flags."""
  from lra import distributed  # pylint: disable=g-import-not-at-top  (imports JAX: slow)
  return distributed.Launch(**{name: flags.FLAGS[name].value for name in LAUNCH_FLAGS})


def launch_args() -> list[str]:
  """The launch flags given on the command line, to pass on to a child process."""
  return [f"--{name}={flags.FLAGS[name].value}" for name in LAUNCH_FLAGS
          if flags.FLAGS[name].present]


def _is_project(record: logging.LogRecord) -> bool:
  return os.path.abspath(record.pathname).startswith(_PROJECT_DIRS)


class _ProjectFormatter(logging.Formatter):
  """The message alone; `warning: ` or `error: ` before one of those levels."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.WARNING:
      message = f"{record.levelname.lower()}: {message}"
    if record.exc_info:
      message += "\n" + self.formatException(record.exc_info)
    return message


def positive_ints(name: str, example: str, *, allow_empty: bool = False) -> None:
  """Validates the list flag `name`: integers >= 1, in the form of `example`."""
  flags.register_validator(
      name, lambda items: (allow_empty or bool(items)) and all(
          s.isdigit() and int(s) > 0 for s in items), f"must be integers >= 1, e.g. {example}")


def subset_of(name: str, choices: Sequence[str], what: str) -> None:
  """Validates the list flag `name`: a subset of `choices`, which `what` names (empty or
  unset: the default of the flag's program)."""
  flags.register_validator(name, lambda names: not names or set(names) <= set(choices),
                           f"must be a comma-separated subset of {what} ({','.join(choices)})")


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, with clear one-line errors for bad input; no entry point takes
  positional arguments."""

  def guarded_main(argv):
    try:
      if len(argv) > 1:
        raise errors.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
      main(argv)
    except errors.UserError as e:
      _fail(e, str(e), sys.argv)

  app.run(guarded_main, flags_parser=_parse_flags)
