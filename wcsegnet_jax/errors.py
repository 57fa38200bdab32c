"""User-facing errors: one clear line on stderr and exit status 2, not a deep traceback.

Ctrl-C is one line too (what was saved, how to resume), with the shell's status for it, 130.
"""

import contextlib
import sys

from wcsegnet_jax import checkpointing
from wcsegnet_jax import config_lib
from wcsegnet_jax import train
from wcsegnet_jax import workdirs
from wcsegnet_jax.data import raw

USER_ERRORS = (raw.DataError, config_lib.ConfigError, checkpointing.CheckpointError,
               workdirs.WorkdirError)
INTERRUPTED_STATUS = 128 + 2   # killed by SIGINT, as shells report it


def user_error(exc: BaseException) -> BaseException | None:
  """The user error behind `exc`, if any (libraries such as TFDS may wrap ours)."""
  while exc is not None:
    if isinstance(exc, USER_ERRORS):
      return exc
    exc = exc.__cause__ or exc.__context__
  return None


@contextlib.contextmanager
def user_errors_as_messages():
  """Prints user errors (bad data, config, checkpoint; unwritable workdir; divergence) cleanly."""
  try:
    yield
  except KeyboardInterrupt as e:
    print(str(e) or 'interrupted', file=sys.stderr)
    sys.exit(INTERRUPTED_STATUS)
  except (OSError, train.TrainingDivergedError) + USER_ERRORS as e:
    cause = user_error(e) or e
    print(f'error: {cause}', file=sys.stderr)
    sys.exit(2)
  except Exception as e:
    cause = user_error(e)
    if cause is None:
      raise
    print(f'error: {cause}', file=sys.stderr)
    sys.exit(2)
