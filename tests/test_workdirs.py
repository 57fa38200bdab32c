"""The workdir: one run at a time, every path checked before data is built, never the cwd."""

import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from configs import base
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.training import train
from wcsegnet_jax.training import workdirs

HOLD = (
  'import pathlib, sys, time\n'
  'from wcsegnet_jax.training import workdirs\n'
  'with workdirs.held(pathlib.Path(sys.argv[1])):\n'
  '  print("held", flush=True)\n'
  '  time.sleep(120)\n'
)


@pytest.fixture
def no_data(monkeypatch):
  """Fails a test that gets as far as building data: the checks must come first."""

  def fail(*args, **kwargs):
    raise AssertionError('data was built before the workdir was checked')

  monkeypatch.setattr(input_pipeline, 'load_datasets', fail)


def _hold_in_another_process(workdir):
  """A python process holding `workdir` (through the same function a run uses)."""
  proc = subprocess.Popen(
    [sys.executable, '-c', HOLD, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
  )
  ready, _, _ = select.select([proc.stdout], [], [], 60)
  if not ready or proc.stdout.readline().strip() != 'held':
    proc.kill()
    pytest.fail('the holding process did not start')
  return proc


def test_second_run_in_a_held_workdir_fails_at_once_naming_the_holder(tmp_path, no_data):
  holder = _hold_in_another_process(tmp_path)
  try:
    start = time.time()
    with pytest.raises(workdirs.WorkdirBusyError) as err:
      train.train_and_evaluate(base.get_config(), tmp_path)
    assert time.time() - start < 10
    message = str(err.value)
    assert f'pid {holder.pid} on host {socket.gethostname()}, started ' in message
    assert str(tmp_path) in message and '\n' not in message
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  with workdirs.held(tmp_path):  # the OS freed the killed holder's lock
    assert str(os.getpid()) in (tmp_path / workdirs.LOCK_FILE).read_text()


def test_a_run_in_the_same_process_is_refused_too(tmp_path):
  with workdirs.held(tmp_path):
    with pytest.raises(workdirs.WorkdirBusyError, match=f'pid {os.getpid()}'):
      with workdirs.held(tmp_path):
        pass
  with workdirs.held(tmp_path):  # released when the block ends
    pass


@pytest.mark.parametrize(
  'blocked, kind, message',
  [
    ('checkpoints', 'file', 'checkpoints is a file, not a folder'),
    ('tensorboard', 'file', 'tensorboard is a file, not a folder'),
    ('metrics.jsonl', 'folder', 'metrics.jsonl is a folder, not a file'),
    ('config.json', 'folder', 'config.json is a folder, not a file'),
    ('.lock', 'folder', '.lock is a folder, not a file'),
  ],
)
def test_paths_the_run_writes_are_checked_before_data_is_built(
  tmp_path, no_data, blocked, kind, message
):
  path = tmp_path / blocked
  path.mkdir() if kind == 'folder' else path.write_text('')
  with pytest.raises(workdirs.WorkdirError, match=message) as err:
    train.train_and_evaluate(base.get_config(), tmp_path)
  assert str(path) in str(err.value)


def test_workdir_that_is_a_file_says_so(tmp_path, no_data):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(workdirs.WorkdirError, match=f'^{blocker} is a file, not a folder;'):
    train.train_and_evaluate(base.get_config(), blocker)
  with pytest.raises(
    workdirs.WorkdirError, match=f'{blocker} is a file, not a folder, so {blocker}/run cannot'
  ):
    train.train_and_evaluate(base.get_config(), blocker / 'run')


@pytest.mark.parametrize('workdir', ['', '  ', None])
def test_empty_workdir_is_an_error_not_the_current_folder(tmp_path, monkeypatch, no_data, workdir):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(workdirs.WorkdirError, match='no workdir given'):
    train.train_and_evaluate(base.get_config(), workdir)
  assert not list(tmp_path.iterdir())
