"""Running absl entry points so that bad input ends in one clear line, not a traceback.

Flag and config problems (an unknown attention, a typo in a `--config.` override, a bad
value) and `lra.errors.UserError` raised by the program print `error: <message>` on stderr
and exit with status 2.
"""

import re
import sys
from typing import Callable

from absl import app
from absl import flags

from lra import errors

# The last "SomeError: message" line of an error text that wraps a traceback.
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.*)$")


def _one_line(error: BaseException) -> str:
  text = str(error).strip().strip("'\"")
  matches = [_ERROR_LINE.match(line) for line in text.splitlines()]
  matches = [m for m in matches if m]
  message = matches[-1].group(2) if matches else text.splitlines()[-1] if text else repr(error)
  if isinstance(error, AttributeError):
    # ml_collections: "'key'\nDid you mean ...?" for an override of a field that is not there.
    text = text.replace("\\n", " ").replace("\\'", "'")
    message = "no such config field " + " ".join(text.split())
  return message.strip().strip("'\"")


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    _exit(_one_line(e))


def _exit(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, with clear one-line errors for bad input."""

  def guarded_main(argv):
    try:
      main(argv)
    except errors.UserError as e:
      _exit(str(e))

  app.run(guarded_main, flags_parser=_parse_flags)
