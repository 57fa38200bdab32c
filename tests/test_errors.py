"""Tests of wcsegnet_jax.errors: one hierarchy, a leaf module, one line for user errors only."""

import subprocess
import sys

import pytest

from conftest import ROOT
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.model import shipped_model
from wcsegnet_jax.training import train
from wcsegnet_jax.training import workdirs


def test_errors_is_a_leaf_module():
  """Printing an error must not load the training stack (JAX, TFDS, orbax)."""
  code = (
    'import sys; import wcsegnet_jax.core.errors; '
    'print(sorted(m for m in sys.modules if m.startswith(("wcsegnet_jax", "jax", '
    '"tensorflow_datasets", "orbax"))))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert out.strip() == "['wcsegnet_jax', 'wcsegnet_jax.core', 'wcsegnet_jax.core.errors']"


@pytest.mark.parametrize(
  'error',
  [
    errors.DataError,
    config_lib.ConfigError,
    errors.CheckpointError,
    shipped_model.PretrainedModelError,
    workdirs.WorkdirError,
    workdirs.WorkdirBusyError,
    train.TrainingDivergedError,
    errors.WriteError,
  ],
)
def test_every_module_error_is_a_user_error(error):
  assert issubclass(error, errors.UserError)


def _exit_of(exc: BaseException, capsys) -> tuple[int, str]:
  with pytest.raises(SystemExit) as done:
    with errors.user_errors_as_messages():
      raise exc
  return done.value.code, capsys.readouterr().err


def test_user_errors_are_one_line_with_status_2(capsys):
  assert _exit_of(errors.DataError('/x/001.png: truncated PNG'), capsys) == (
    2,
    'error: /x/001.png: truncated PNG\n',
  )
  try:  # wrapped by a library (TFDS does): the user's error is what is printed
    raise RuntimeError('in a TFDS worker') from config_lib.ConfigError('bad key')
  except RuntimeError as wrapped:
    assert _exit_of(wrapped, capsys) == (2, 'error: bad key\n')


def test_ctrl_c_is_one_line_with_status_130(capsys):
  code, err = _exit_of(
    train.TrainingInterrupted('interrupted at step 3; last checkpoint 2'), capsys
  )
  assert code == 130 and err == 'interrupted at step 3; last checkpoint 2\n'


@pytest.mark.parametrize('bug', [OSError('disk exploded'), ValueError('a bug'), KeyError('k')])
def test_other_errors_keep_their_traceback(bug):
  """Not the user's to fix: re-raised as they are, so the traceback reaches the report."""
  with pytest.raises(type(bug)):
    with errors.user_errors_as_messages():
      raise bug


def test_a_bug_raised_while_a_user_error_propagates_keeps_its_traceback():
  with pytest.raises(AttributeError):
    with errors.user_errors_as_messages():
      try:
        raise errors.DataError('bad file')
      finally:
        raise AttributeError('a bug in the clean-up')
