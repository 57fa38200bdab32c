"""The errors a user can fix, in one hierarchy, and how the commands print them.

A leaf module (it imports nothing of ours), so any module can raise these and every command can
print them without loading the training stack. A `UserError` becomes one line on stderr and exit
status 2; anything else keeps its traceback, since it is a bug to report. Ctrl-C is one line too,
with the shell's status for it (130).
"""

import contextlib
import os
import re
import signal
import sys

INTERRUPTED_STATUS = 128 + 2  # killed by SIGINT, as shells report it
USAGE_STATUS = 2


class UserError(Exception):
  """A problem with what the user gave (data, config, checkpoint, paths); the message names the
  file or key and the fix."""


class UsageError(UserError, ValueError):
  """A command-line flag whose value cannot be meant (a negative size, an unknown choice)."""


class DataError(UserError, ValueError):
  """Raw data that cannot be used as given (missing, unreadable, inconsistent files)."""


class ConfigError(UserError, ValueError):
  """A config that cannot run; the message lists every problem found."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint cannot be used as asked; the message says why and what to do."""


class WorkdirError(UserError, OSError):
  """The workdir cannot be used; the message names the path and the fix."""


class WorkdirBusyError(WorkdirError):
  """Another run holds the workdir; the message says which process."""


class WriteError(UserError, OSError):
  """Results could not be written (disk full, permissions); what was written before is intact."""


class TrainingDivergedError(UserError, RuntimeError):
  """The loss became NaN or infinite; the message names the step and what to try."""


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C during training; the message says where it stopped and how to resume."""


class PredictionInterrupted(KeyboardInterrupt):
  """Ctrl-C during predict; the message says what was kept and how to continue."""


# TensorStore (under orbax) raises storage failures as ValueError with its status code first.
_TENSORSTORE_STORAGE = re.compile(
  r'(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|NOT_FOUND|DATA_LOSS): (.*)', re.DOTALL
)


def storage_failure(exc: BaseException | None) -> str | None:
  """A short phrase for an error of the storage (a full disk, permissions), or None: an OSError,
  or TensorStore's ValueError, whose own text runs to several nested paths."""
  if isinstance(exc, OSError):
    return str(exc)
  match = _TENSORSTORE_STORAGE.match(str(exc)) if isinstance(exc, ValueError) else None
  if not match:
    return None
  reason = match[2].split(' [')[0].rsplit(': ', 1)[-1]  # without TensorStore's source lines
  return f'{match[1]} ({reason.strip()})'


def terminate_as_interrupt() -> None:
  """SIGTERM (a batch scheduler's or `kill`'s stop) ends a run as Ctrl-C does: the checkpoint
  in flight completes and one line says where the run stopped. Call from the main thread."""

  def interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, interrupt)


def user_error(exc: BaseException | None) -> UserError | None:
  """The user error behind `exc`, if any: `exc` itself, or one it explicitly wraps (`raise ...
  from`, as libraries such as TFDS do). An error merely raised while a user error was being
  handled is not one: it is a bug, and keeps its traceback."""
  while exc is not None:
    if isinstance(exc, UserError):
      return exc
    exc = exc.__cause__
  return None


@contextlib.contextmanager
def user_errors_as_messages():
  """Prints user errors as one line (exit 2) and Ctrl-C as one line (exit 130)."""
  try:
    yield
  except KeyboardInterrupt as e:
    print(str(e) or 'interrupted', file=sys.stderr)
    sys.exit(INTERRUPTED_STATUS)
  except Exception as e:  # pylint: disable=broad-except
    cause = user_error(e)
    if cause is None:
      raise
    print(f'error: {cause}', file=sys.stderr)
    sys.exit(USAGE_STATUS)


def exit_now(error: UserError) -> None:
  """Prints `error` as `user_errors_as_messages` does and ends the process at once (exit 2): for
  a thread that cannot raise into a main thread held in native code (JAX's join)."""
  sys.stdout.flush()
  print(f'error: {error}', file=sys.stderr, flush=True)
  os._exit(USAGE_STATUS)
