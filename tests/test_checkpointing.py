"""Resume checks, the metric log on resume, and saves that fail or are interrupted (the orbax
round trips are in test_train.py)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from configs import base
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.training import checkpointing
from wcsegnet_jax.training import metric_writers


def _as_json(config):
  return json.loads(config.to_json())


def test_changed_model_data_or_prng_is_named():
  saved, current = base.get_config(), base.get_config()
  current.model.base_width = 32
  current.data.split_seed = 3
  current.rng_impl = 'threefry2x32'
  diffs = config_lib.config_mismatches(_as_json(saved), _as_json(current))
  assert diffs == [
    'data.split_seed: 0 -> 3',
    'model.base_width: 64 -> 32',
    "rng_impl: 'rbg' -> 'threefry2x32'",
  ]


def test_moved_data_and_input_speed_do_not_block_a_resume():
  saved, current = base.get_config(), base.get_config()
  current.data.raw_dir = '/elsewhere/segmentation_WBC'
  current.data.tfds_dir = '/fast/disk'
  current.input.read_threads = 16
  current.train.num_epochs = 500  # extending a run is allowed
  assert config_lib.config_mismatches(_as_json(saved), _as_json(current)) == []


def test_keys_added_after_a_config_was_saved_count_at_their_default():
  """A config.json from before model.patch_size existed still matches the same model."""
  saved, current = _as_json(base.get_config()), base.get_config()
  del saved['model']['patch_size']
  del saved['data']['dataset_repeats']
  assert config_lib.config_mismatches(saved, _as_json(current)) == []
  current.model.patch_size = 2
  assert config_lib.config_mismatches(saved, _as_json(current)) == ['model.patch_size: 1 -> 2']


def test_a_knob_another_one_replaces_may_differ():
  """augment.zoom is unused while augment.zoom_range is set, in both configs; not otherwise."""
  saved, current = base.get_config(), base.get_config()
  saved.augment.zoom_range = current.augment.zoom_range = (0.7, 1.15)
  saved.augment.zoom, current.augment.zoom = 0.15, 0.2
  assert config_lib.config_mismatches(_as_json(saved), _as_json(current)) == []
  current.augment.zoom_range = ()
  assert config_lib.config_mismatches(_as_json(saved), _as_json(current)) == [
    'augment.zoom: 0.15 -> 0.2',
    'augment.zoom_range: [0.7, 1.15] -> []',
  ]


def test_check_resume_config_needs_a_checkpoint(tmp_path):
  config = base.get_config()
  run_files.write_config(tmp_path, config)
  config.model.base_width = 8
  checkpointing.check_resume_config(tmp_path, config)  # no checkpoint yet: a fresh start
  (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
  with pytest.raises(errors.CheckpointError, match='model.base_width: 64 -> 8'):
    checkpointing.check_resume_config(tmp_path, config)


def test_write_config_round_trips_and_leaves_no_temporary(tmp_path):
  config = base.get_config()
  run_files.write_config(tmp_path, config)
  assert run_files.load_saved_config(tmp_path) == _as_json(config)
  assert [p.name for p in tmp_path.iterdir()] == [run_files.CONFIG_FILE]


def test_resumed_metric_log_drops_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path)
  for step in (10, 20, 30, 40):
    writer.write(step, {'loss': 1.0 / step})
  writer.close()
  writer = metric_writers.MetricWriter(tmp_path, resume_step=20)
  writer.write(30, {'loss': 0.5})
  writer.close()
  steps = [r['step'] for r in run_files.read_metrics(tmp_path)]
  assert steps == [10, 20, 30]


SAVE_INTO_A_FILE = """
import pathlib, shutil, sys
import jax.numpy as jnp
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.training import checkpointing
workdir = pathlib.Path(sys.argv[1])
manager = checkpoints.make_manager(workdir)
shutil.rmtree(workdir / 'checkpoints')
(workdir / 'checkpoints').write_text('')   # made a file after the start-up checks
try:
  checkpointing.save(manager, 1, {'w': jnp.ones(3)}, None, None)
  checkpointing.finish(manager)
except OSError as e:
  print(e)
"""


def test_failed_save_is_an_error_and_the_process_exits(tmp_path):
  """orbax made step folders in background threads; when that failed, its other threads waited
  20 minutes for them, and the process could not exit."""
  result = subprocess.run(
    [sys.executable, '-c', SAVE_INTO_A_FILE, str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert (
    f'writing the checkpoint of step 1 to {tmp_path}/checkpoints failed: [Errno 20] Not a directory'
  ) in result.stdout


class _SaveInterruptedMidway:
  """A manager whose save receives Ctrl-C (a real SIGINT) half-way through."""

  def __init__(self):
    self.finished = []

  def save(self, step, args, metrics):
    os.kill(os.getpid(), signal.SIGINT)
    self.finished.append(step)


def test_ctrl_c_during_a_save_is_raised_once_the_save_has_started_whole():
  manager = _SaveInterruptedMidway()
  with pytest.raises(KeyboardInterrupt):
    checkpointing.save(manager, 7, {'w': 1.0}, None, None)
  assert manager.finished == [7]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_key_added_later_is_protected_without_listing_it():
  """Only the free keys may change on resume: a new training knob is checked by default."""
  saved, current = base.get_config(), base.get_config()
  saved.train.some_new_knob, current.train.some_new_knob = 1.0, 2.0
  current.model.dtype = 'bfloat16'
  current.eval.tta = True  # evaluation settings are free
  current.train.keep_checkpoints = 9
  assert config_lib.config_mismatches(_as_json(saved), _as_json(current)) == [
    "model.dtype: 'float32' -> 'bfloat16'",
    'train.some_new_knob: 1.0 -> 2.0',
  ]


class _ManagerWithoutScores:
  """A manager whose steps were saved without a test Dice (no test split)."""

  directory = '/runs/no_test/checkpoints'

  def all_steps(self):
    return [10, 20]

  def latest_step(self):
    return 20

  def best_step(self):
    return None


def test_best_on_a_run_without_test_scores_is_refused_not_the_latest():
  with pytest.raises(
    errors.CheckpointError,
    match='none is best: pass --checkpoint='
    r'latest or a step \(\[10, 20\]\)',
  ):
    checkpoints.select_step(_ManagerWithoutScores(), 'best')
  assert checkpoints.select_step(_ManagerWithoutScores(), 'latest') == 20
