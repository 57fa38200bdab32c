"""Training: the step learns, the loop writes what it promises, resume is exact, faults are
clear."""

import functools
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REAL_WBC_DIR, ROOT
import fixtures
from configs import base
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import normalize
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.model import metrics
from wcsegnet_jax.model import models
from wcsegnet_jax.training import checkpointing
from wcsegnet_jax.training import metric_writers
from wcsegnet_jax.training import train


def tiny_config(raw_dir, tfds_dir, **train_overrides):
  """A net of a few thousand parameters on 32x32 images: whole runs take seconds on a CPU."""
  c = base.get_config()
  c.data.raw_dir, c.data.tfds_dir = str(raw_dir), str(tfds_dir)
  c.data.image_size = 32
  c.model.update(base_width=2, num_levels=2, blocks_per_stage=1)
  c.augment.augment_repeats = 1
  c.train.update(
    {
      'batch_size': 4,
      'num_epochs': 2,
      'log_every_steps': 2,
      'progress_bar': False,
      'learning_rate': 1e-3,
      **train_overrides,
    }
  )
  c.eval.batch_size = 8
  return c


def cli_args(c) -> list[str]:
  """The command-line overrides that turn configs/base.py into `c`."""
  return [
    f'--config={ROOT}/configs/base.py',
    f'--config.data.raw_dir={c.data.raw_dir}',
    f'--config.data.tfds_dir={c.data.tfds_dir}',
    f'--config.data.image_size={c.data.image_size}',
    f'--config.model.base_width={c.model.base_width}',
    f'--config.model.num_levels={c.model.num_levels}',
    f'--config.model.blocks_per_stage={c.model.blocks_per_stage}',
    f'--config.augment.augment_repeats={c.augment.augment_repeats}',
    f'--config.train.batch_size={c.train.batch_size}',
    f'--config.train.num_epochs={c.train.num_epochs}',
    f'--config.train.learning_rate={c.train.learning_rate}',
    '--config.train.progress_bar=False',
    f'--config.eval.batch_size={c.eval.batch_size}',
  ]


def run_main(args, **kwargs):
  return subprocess.run(
    [sys.executable, '-m', 'wcsegnet_jax.main', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    **kwargs,
  )


def final_params(workdir: pathlib.Path):
  """The parameters of a workdir's latest checkpoint, as a numpy tree."""
  manager = checkpoints.make_manager(workdir, read_only=True)
  path = manager.directory / str(manager.latest_step()) / 'state'
  return ocp.StandardCheckpointer().restore(path)['params']


def test_tiny_net_overfits_eight_images(wbc_raw, wbc_tfds_dir):
  c = tiny_config(*wbc_raw[:1], wbc_tfds_dir)
  c.data.image_size = 64
  c.model.update(base_width=8, encoder_dropout=0.0, decoder_dropout=0.0, head_dropout=0.0)
  c.train.learning_rate = 3e-3
  source = tfds_builder.prepare('jiangxi', c.data).as_data_source('train')
  batch = {k: np.stack([source[i][k] for i in range(8)]) for k in ('image', 'label_map')}
  model = models.create_model(c.model, classes.table_of(c.data).num_classes)
  state = jax.jit(
    functools.partial(train.create_train_state, c, model, tx=train.make_optimizer(c.train, 1, 1))
  )(0)
  step = jax.jit(train.make_train_step(c))
  state, _ = step(state, batch)  # compiles
  start = time.time()
  for _ in range(119):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  images = normalize.normalize_images(batch['image'], c.data.mean, c.data.std)
  logits = model.apply(train.variables_of(state), images, train=False)
  cm = np.asarray(metrics.per_image_confusion(batch['label_map'], logits.argmax(-1)).sum(0))
  assert metrics.paper_metrics(cm)['dice'] > 0.9
  assert time.time() - start < 60


def test_train_and_evaluate_writes_logs_config_and_checkpoints(wbc_raw, wbc_tfds_dir, tmp_path):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, keep_checkpoints=1)
  state = train.train_and_evaluate(c, str(tmp_path))
  spe = input_pipeline.steps_per_epoch(input_pipeline.load_datasets(c.data), c)
  assert int(state.step) == 2 * spe
  records = run_files.read_metrics(tmp_path)
  assert any('test/jiangxi/dice' in r for r in records)
  assert any('images_per_second' in r for r in records)
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert (tmp_path / 'config.json').exists()
  assert list((tmp_path / 'tensorboard').iterdir())
  # Keeps the last one and the best by test Dice (which may be the same step).
  manager = checkpoints.make_manager(tmp_path, read_only=True)
  assert manager.latest_step() == 2 * spe
  assert set(manager.all_steps()) <= {spe, 2 * spe}


def test_resume_continues_from_the_checkpoint_step(wbc_raw, wbc_tfds_dir, tmp_path):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1)
  first = int(train.train_and_evaluate(c, str(tmp_path)).step)
  # Same config again: resumes at the last step, nothing left to do.
  assert int(train.train_and_evaluate(c, str(tmp_path)).step) == first
  # More epochs extend the run from its checkpoint.
  c.train.num_epochs = 2
  assert int(train.train_and_evaluate(c, str(tmp_path)).step) == 2 * first


def test_resume_with_another_model_names_the_differing_keys(wbc_raw, wbc_tfds_dir, tmp_path):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1)
  train.train_and_evaluate(c, str(tmp_path))
  c.model.base_width = 3
  c.data.image_size = 48
  with pytest.raises(errors.CheckpointError) as err:
    train.train_and_evaluate(c, str(tmp_path))
  assert 'model.base_width: 2 -> 3' in str(err.value)
  assert 'data.image_size: 32 -> 48' in str(err.value)


@pytest.mark.parametrize('how', ['truncated', 'no_metadata'])
def test_resume_from_a_damaged_checkpoint_says_how_and_resumes_from_the_intact_step(
  wbc_raw, wbc_tfds_dir, tmp_path, how
):
  """A damaged latest step is named (not blamed on the config), with the intact step and the
  command that makes the run resume from it; nothing is deleted."""
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=2)
  last = int(train.train_and_evaluate(c, str(tmp_path)).step)
  damaged = tmp_path / 'checkpoints' / str(last)
  fixtures.damage_checkpoint(damaged, how)
  with pytest.raises(errors.CheckpointError) as err:
    train.train_and_evaluate(c, str(tmp_path))
  intact = last // 2
  assert str(err.value).startswith(f'checkpoint {damaged} is damaged (')
  assert (
    f'step {intact} is intact: to resume from step {intact}, move the damaged step aside '
    f'(mv {damaged} {damaged}.damaged) and run the same command'
  ) in str(err.value)
  assert damaged.is_dir()
  damaged.rename(f'{damaged}.damaged')
  assert int(train.train_and_evaluate(c, str(tmp_path)).step) == last
  assert (tmp_path / 'checkpoints' / f'{last}.damaged').is_dir()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(wbc_raw, wbc_tfds_dir, tmp_path):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=12)
  args = cli_args(c)
  whole, killed = tmp_path / 'whole', tmp_path / 'killed'
  assert run_main([*args, f'--workdir={whole}']).returncode == 0

  proc = subprocess.Popen(
    [sys.executable, '-m', 'wcsegnet_jax.main', *args, f'--workdir={killed}'],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  ckpt_dir = killed / 'checkpoints'
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, 'the run ended before it could be killed'
  steps = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
  final_step = max(int(p.name) for p in (whole / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and max(steps) < final_step, 'nothing left to resume'

  resumed = run_main([*args, f'--workdir={killed}'])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  a, b = final_params(whole), final_params(killed)
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
  assert max(diffs) <= 1e-6


class _Bar:
  """Stands in for a tqdm bar; records whether it was taken off the terminal."""

  def __init__(self, *args, **kwargs):
    self.closed = False

  def update(self, n):
    pass

  def close(self):
    self.closed = True


def test_nan_loss_stops_names_the_step_and_what_to_try(
  wbc_raw, wbc_tfds_dir, tmp_path, monkeypatch
):
  bars = []
  monkeypatch.setattr(train.tqdm, 'tqdm', lambda *a, **k: bars.append(_Bar()) or bars[-1])
  monkeypatch.setattr(train.sys, 'stderr', _Terminal())  # the bar shows on terminals only
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, learning_rate=1e30, num_epochs=3, progress_bar=True)
  with pytest.raises(train.TrainingDivergedError, match=r'at step \d+') as err:
    train.train_and_evaluate(c, str(tmp_path))
  message = str(err.value)
  assert 'no checkpoint was written yet' in message and 'None' not in message
  assert message.endswith('Train again with a lower train.learning_rate in a new --workdir.')
  assert bars and all(bar.closed for bar in bars)  # the message gets a line of its own
  records = run_files.read_metrics(tmp_path) if (tmp_path / 'metrics.jsonl').exists() else []
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)


def test_divergence_suggests_float32_only_when_the_model_is_not():
  message = train.divergence_message(
    'loss is inf', 40, 30, pathlib.Path('/w/checkpoints'), 'bfloat16'
  )
  assert message == (
    'loss is inf at step 40; stopping: the last good checkpoint (step 30) is '
    'kept in /w/checkpoints. Train again with a lower train.learning_rate or '
    'model.dtype=float32 (now bfloat16) in a new --workdir.'
  )
  assert 'float32' not in train.divergence_message(
    'loss is nan', 1, None, pathlib.Path('/w'), 'float32'
  )


def test_workdir_below_a_file_is_a_clear_error(wbc_raw, wbc_tfds_dir, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  c = tiny_config(wbc_raw[0], wbc_tfds_dir)
  with pytest.raises(OSError, match=f'{blocker} is a file, not a folder'):
    train.train_and_evaluate(c, str(blocker / 'workdir'))


def test_ctrl_c_says_where_it_stopped_and_the_run_resumes_exactly(
  wbc_raw, wbc_tfds_dir, tmp_path, monkeypatch
):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=2)
  spe = input_pipeline.steps_per_epoch(input_pipeline.load_datasets(c.data), c)
  train.train_and_evaluate(c, tmp_path / 'whole')
  real_save = checkpointing.save

  def save_then_ctrl_c(*args, **kwargs):
    real_save(*args, **kwargs)
    raise KeyboardInterrupt  # while the first checkpoint is written in the background

  monkeypatch.setattr(checkpointing, 'save', save_then_ctrl_c)
  with pytest.raises(train.TrainingInterrupted) as err:
    train.train_and_evaluate(c, tmp_path / 'cut')
  assert str(err.value) == (
    f'interrupted at step {spe}; last checkpoint {spe}; run the same command to resume'
  )
  monkeypatch.undo()
  assert int(train.train_and_evaluate(c, tmp_path / 'cut').step) == 2 * spe
  a, b = final_params(tmp_path / 'whole'), final_params(tmp_path / 'cut')
  assert max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))) <= 1e-6


@pytest.mark.parametrize('stop', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_a_terminal_is_one_line_and_status_130(wbc_raw, wbc_tfds_dir, tmp_path, stop):
  """SIGINT to the whole process group, as a terminal sends it, or SIGTERM, as a batch
  scheduler or `kill` does: one line, and the checkpoint named is whole."""
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=500)
  workdir, log = tmp_path / 'wd', tmp_path / 'stderr.txt'
  with open(log, 'w') as stderr:
    proc = subprocess.Popen(
      [sys.executable, '-m', 'wcsegnet_jax.main', *cli_args(c), f'--workdir={workdir}'],
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
      stderr=stderr,
      start_new_session=True,
    )
  try:
    deadline = time.time() + 120
    while (
      time.time() < deadline and proc.poll() is None and not checkpointing.has_checkpoint(workdir)
    ):
      time.sleep(0.05)
    os.killpg(proc.pid, stop)
    assert proc.wait(timeout=60) == 130
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  text = log.read_text()
  match = re.fullmatch(
    r'interrupted at step (\d+); last checkpoint (\d+); run the same command '
    r'to resume',
    text.splitlines()[-1],
  )
  assert match and 'Traceback' not in text, text[-3000:]
  step, last = int(match[1]), int(match[2])
  manager = checkpoints.make_manager(workdir, read_only=True)
  assert manager.latest_step() == last <= step
  assert final_params(workdir)  # restores: the checkpoint was written whole


@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_and_keeps_the_earlier_checkpoints(
  wbc_raw, wbc_tfds_dir, small_disk
):
  """TensorStore reports a full disk as a ValueError (RESOURCE_EXHAUSTED), which orbax logs from
  each of its threads: a thousand lines and no line of ours. One line now, nothing lost."""
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=40, keep_checkpoints=40)
  workdir = small_disk / 'run'
  result = run_main(
    [*cli_args(c), '--config.train.keep_checkpoints=40', f'--workdir={workdir}'], timeout=300
  )
  assert result.returncode == 2, result.stderr[-3000:]
  # Left: TensorStore's C code prints, past any Python hook, a callback that found orbax's
  # event loop closed after the failure (now and then, a few lines each, from several threads,
  # so their lines can interleave with each other and with log lines: matched anywhere).
  noise = re.compile(
    r'Traceback \(most recent call last\):|File \".*asyncio/base_events\.py\"|'
    r"self\._check_closed\(\)|raise RuntimeError\('Event loop is closed'\)|"
    r'RuntimeError: Event loop is closed|[IW]\d{4} |WARNING:absl:.*snapped'
  )
  # Whole lines of theirs, or (the threads print at once) pieces of their last line.
  pieces = lambda line: not re.sub(r'RuntimeError|Event loop is closed|[:\s]', '', line)
  ours = [
    line
    for line in result.stderr.splitlines()
    if line.strip() and not noise.search(line) and not pieces(line)
  ]
  assert len(ours) == 1, '\n'.join(ours[:40])
  assert re.fullmatch(
    rf'error: writing (the checkpoint of step \d+|a checkpoint|the metrics) to '
    rf'{workdir}.* '
    r'failed: .*No space left on device.* intact\.?',
    ours[0],
  ), ours[0]
  saved = checkpoints.make_manager(workdir, read_only=True).all_steps()
  assert saved and all(
    checkpoints.state_damage(workdir / 'checkpoints' / str(step)) is None for step in saved
  )


def test_invalid_config_fails_before_anything_compiles(tmp_path):
  c = base.get_config()
  c.train.learning_rate = 0.0
  with pytest.raises(config_lib.ConfigError, match='learning_rate'):
    train.train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_main_reports_bad_config_without_traceback(tmp_path):
  result = run_main(
    [f'--config={ROOT}/configs/smoke.py', f'--workdir={tmp_path}', '--config.model.num_levels=7']
  )
  assert result.returncode == 2
  assert 'image_size=64 is too small for model.num_levels=7' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not REAL_WBC_DIR.is_dir(), reason='no shared WBC data on this machine')
def test_smoke_config_runs_end_to_end_on_the_shared_data(tmp_path):
  start = time.time()
  result = run_main(
    [
      f'--config={ROOT}/configs/smoke.py',
      f'--workdir={tmp_path / "wd"}',
      f'--config.data.raw_dir={REAL_WBC_DIR}',
      f'--config.data.tfds_dir={tmp_path / "tfds"}',
      '--config.train.progress_bar=False',
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # Training, then the final evaluation's reports and figures (~30 s more on a loaded 2-core
  # machine, where the whole took 219 s once).
  assert time.time() - start < 240
  records = run_files.read_metrics(tmp_path / 'wd')
  assert any('test/cellavision/dice' in r for r in records)
  assert (tmp_path / 'wd' / 'eval' / 'cellavision' / 'report.md').is_file()


def test_slow_run_on_a_cpu_says_so_once_with_the_estimate(
  wbc_raw, wbc_tfds_dir, tmp_path, monkeypatch
):
  """The duration estimate is made once, from a timed step after compilation, and logged."""
  calls, logged = [], []
  real = metric_writers.training_time_warning

  def over_a_millisecond(seconds_per_step, steps_left, backend, config_name):
    calls.append((seconds_per_step, steps_left, backend))
    return real(seconds_per_step, steps_left, backend, config_name, limit_s=1e-3)

  monkeypatch.setattr(metric_writers, 'training_time_warning', over_a_millisecond)
  monkeypatch.setattr(train.logging, 'warning', lambda fmt, *a: logged.append(fmt % a))
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1, progress_bar=True)
  state = train.train_and_evaluate(c, str(tmp_path))
  ((seconds_per_step, steps_left, backend),) = calls
  assert seconds_per_step > 0 and steps_left == int(state.step) - 1 and backend == 'cpu'
  (line,) = [m for m in logged if 'configs/cpu.py' in m]
  assert 'this run needs about' in line


def test_resume_on_changed_data_is_refused_with_what_changed(wbc_raw, wbc_tfds_dir, tmp_path):
  """Images removed after a run started: the resumed split would test on training images."""
  raw_dir = tmp_path / 'raw'
  shutil.copytree(wbc_raw[0], raw_dir)
  c = tiny_config(raw_dir, tmp_path / 'tfds', num_epochs=1)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(c, workdir)
  record = json.loads((workdir / run_files.DATA_FILE).read_text())
  assert set(record) == {'jiangxi', 'cellavision'}
  assert record['jiangxi']['train'] and not set(record['jiangxi']['train']) & set(
    record['jiangxi']['test']
  )
  gone = {int(fid) for fid in record['jiangxi']['train'][:3]}  # ids are '3' for 003.bmp
  for path in (raw_dir / 'Dataset 1').iterdir():  # three training images leave the folder
    if int(path.stem) in gone:
      path.unlink()
  csv_path = raw_dir / 'Class Labels of Dataset 1.csv'
  keep = [
    line
    for line in csv_path.read_text().splitlines()
    if not line.split(',')[0].strip().isdigit() or int(line.split(',')[0]) not in gone
  ]
  csv_path.write_text('\n'.join(keep) + '\n')
  c.train.num_epochs = 2
  with pytest.raises(
    errors.CheckpointError,
    match=r'data changed.*jiangxi: 3 images '
    r'removed \([^.]*\).*resume_on_changed_data=True',
  ):
    train.train_and_evaluate(c, workdir)
  c.train.resume_on_changed_data = True  # asked for explicitly: goes on, and records the data
  train.train_and_evaluate(c, workdir)
  now = json.loads((workdir / run_files.DATA_FILE).read_text())
  earlier = list(workdir.glob('data.until_step_*.json'))  # what the earlier steps trained on
  assert len(earlier) == 1 and json.loads(earlier[0].read_text()) == record
  assert (
    len(now['jiangxi']['train']) + len(now['jiangxi']['test'])
    == len(record['jiangxi']['train']) + len(record['jiangxi']['test']) - 3
  )


def test_moved_data_folder_resumes():
  """The same images in another folder (another build name) are no change."""
  same = {'jiangxi': {'build': 'jiangxi-32-aaa', 'train': ['1', '2'], 'test': ['3']}}
  moved = {'jiangxi': {'build': 'jiangxi-32-bbb', 'train': ['1', '2'], 'test': ['3']}}
  assert checkpointing.data_changes(same, moved) == []
  resplit = {'jiangxi': {'build': 'x', 'train': ['1', '3'], 'test': ['2']}}
  assert checkpointing.data_changes(same, resplit) == [
    'jiangxi: 1 of its 1 test images were training images, '
    '1 former test images are now training images'
  ]


def _numbered_batches(n: int = 8):
  """A grain iterator of n batches [2i, 2i + 1], with a state to save and restore."""
  return iter(grain.MapDataset.range(2 * n).batch(2).to_iter_dataset())


def test_device_prefetch_keeps_the_batch_order_and_saves_the_consumed_position():
  sent = []
  it = input_pipeline.DevicePrefetch(
    _numbered_batches(), lambda b: sent.append(b) or jax.device_put(b)
  )
  plain = [list(b) for b in _numbered_batches()]
  taken = [list(np.asarray(next(it))) for _ in range(3)]
  assert len(sent) == 4  # the 4th batch is on its way while the 3rd is used
  state = it.get_state()  # what a checkpoint after the 3rd step saves
  rest = [list(np.asarray(b)) for b in it]
  assert taken + rest == plain
  # A resume from that state starts at the first batch no step took, not the one in flight.
  resumed = input_pipeline.DevicePrefetch(_numbered_batches(), jax.device_put)
  resumed.set_state(state)
  assert [list(np.asarray(b)) for b in resumed] == rest
  again = input_pipeline.DevicePrefetch(_numbered_batches(), jax.device_put)
  next(again)
  again.set_state(state)  # drops the batch in flight
  assert list(np.asarray(next(again))) == plain[3]


class _NoCheckpoints:
  directory = pathlib.Path('/w/checkpoints')

  def latest_step(self):
    return None


def test_logging_fetches_one_array_and_names_the_first_bad_step(monkeypatch):
  losses, accuracies = [0.5, 0.25, 1.0, 0.75], [0.1, 0.2, 0.3, 0.4]
  history = [
    (
      10 + i,
      {'loss': jnp.float32(l), 'pixel_accuracy': jnp.float32(a), 'grad_norm': jnp.float32(1.0)},
    )
    for i, (l, a) in enumerate(zip(losses, accuracies))
  ]
  fetched, real_get = [], jax.device_get
  monkeypatch.setattr(train.jax, 'device_get', lambda x: fetched.append(x) or real_get(x))
  c = base.get_config()
  scalars = train._train_scalars(history, metric_writers.StepTimer(10), 14, 7, _NoCheckpoints(), c)
  (array,) = fetched
  # One array: the 4 steps padded to the longest possible history, min(log_every_steps, epoch).
  assert isinstance(array, jax.Array) and array.shape == (7, 3)
  assert scalars['loss'] == pytest.approx(np.mean(losses))
  assert scalars['pixel_accuracy'] == pytest.approx(np.mean(accuracies))
  assert scalars['epoch'] == 2.0 and scalars['images_per_second'] > 0
  # A finite loss with a gradient that is not: the update has poisoned the parameters.
  history[1] = (
    11,
    {
      'loss': jnp.float32(0.5),
      'pixel_accuracy': jnp.float32(0.3),
      'grad_norm': jnp.float32(np.nan),
    },
  )
  with pytest.raises(train.TrainingDivergedError, match='gradient norm is nan at step 11'):
    train._train_scalars(history, metric_writers.StepTimer(10), 14, 7, _NoCheckpoints(), c)
  history[1] = (
    11,
    {'loss': jnp.float32(0.5), 'pixel_accuracy': jnp.float32(0.3), 'grad_norm': jnp.float32(2.0)},
  )
  history[2] = (
    12,
    {
      'loss': jnp.float32(np.nan),
      'pixel_accuracy': jnp.float32(0.3),
      'grad_norm': jnp.float32(np.nan),
    },
  )
  history[3] = (
    13,
    {
      'loss': jnp.float32(np.inf),
      'pixel_accuracy': jnp.float32(0.3),
      'grad_norm': jnp.float32(1.0),
    },
  )
  with pytest.raises(train.TrainingDivergedError, match='loss is nan at step 12'):
    train._train_scalars(history, metric_writers.StepTimer(10), 14, 7, _NoCheckpoints(), c)


def test_global_norm_of_the_gradient_covers_every_leaf():
  grads = {'a': jnp.array([3.0, 0.0]), 'b': {'c': jnp.array([[4.0]], jnp.bfloat16)}}
  assert float(train._global_norm(grads)) == pytest.approx(5.0)


def test_ema_update_warms_up_then_keeps_the_configured_decay():
  ema, params = {'w': jnp.zeros(3)}, {'w': jnp.ones(3)}
  # Step 1: decay min(0.99, 2/11) -> the average moves 9/11 of the way to the parameters.
  np.testing.assert_allclose(
    train.ema_update(ema, params, jnp.float32(1), 0.99)['w'], 9 / 11, rtol=1e-6
  )
  # Late in a run the configured decay holds.
  np.testing.assert_allclose(
    train.ema_update(ema, params, jnp.float32(1e6), 0.99)['w'], 0.01, rtol=1e-4
  )


def test_ema_is_kept_beside_the_parameters_and_evaluated_when_asked(
  wbc_raw, wbc_tfds_dir, tmp_path
):
  from wcsegnet_jax.model import restore

  off = train.train_and_evaluate(
    tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1), str(tmp_path / 'off')
  )
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1, ema_decay=0.9)
  on = train.train_and_evaluate(c, str(tmp_path / 'on'))
  assert not hasattr(off, 'ema_params') and train.variables_of(off)['params'] is off.params
  # The average never feeds back into training: the parameters are those of the run without it.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), on.params, off.params
  )
  assert not all(
    np.allclose(a, b) for a, b in zip(jax.tree.leaves(on.ema_params), jax.tree.leaves(on.params))
  )
  # Evaluation reads the average by default, the parameters with eval.ema=False.
  for ema, want in ((True, on.ema_params), (False, on.params)):
    c.eval.ema = ema
    variables, _ = restore.load_variables(c, tmp_path / 'on', 'latest')
    jax.tree.map(np.testing.assert_array_equal, variables['params'], jax.device_get(want))
  # --mode=evaluate says which it read, and keeps each in its own folder.
  from wcsegnet_jax.evaluation import evaluate

  for ema, folder in ((True, 'jiangxi'), (False, 'jiangxi-raw')):
    c.eval.ema = ema
    evaluate.evaluate_checkpoint(c, str(tmp_path / 'on'))
    meta = json.loads((tmp_path / 'on' / 'eval' / folder / 'metrics.json').read_text())
    assert meta['ema'] is ema
  # A run with an average resumes with it.
  c.train.num_epochs = 2
  resumed = train.train_and_evaluate(c, str(tmp_path / 'on'))
  assert int(resumed.step) == 2 * int(on.step) and hasattr(resumed, 'ema_params')
  # A run without an average evaluates its parameters whatever eval.ema says.
  variables, _ = restore.load_variables(
    tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1), tmp_path / 'off', 'latest'
  )
  jax.tree.map(np.testing.assert_array_equal, variables['params'], jax.device_get(off.params))


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_covers_the_whole_run_and_only_on_a_terminal():
  """One bar over all steps (its ETA the run's), the epoch in its label, resumed where the
  run is; nothing at all when the output is a pipe or a file."""
  piped = io.StringIO()
  progress = train.RunProgress(total_steps=6, steps_per_epoch=3, enabled=True, stream=piped)
  for step in range(1, 7):
    progress.finished(step, np.float32(step))
  progress.abandon()
  assert piped.getvalue() == ''
  terminal = _Terminal()
  progress = train.RunProgress(total_steps=6, steps_per_epoch=3, enabled=True, stream=terminal)
  progress.finished(4, np.float32(4))  # a run resumed after its first epoch
  progress.abandon()
  shown = terminal.getvalue()
  assert 'epoch 2/2' in shown and 'step 3/6' in shown, shown


def test_a_batch_larger_than_the_training_set_is_one_warning_with_the_numbers(
  wbc_raw, wbc_tfds_dir, tmp_path, caplog
):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, batch_size=96, num_epochs=1)
  examples = input_pipeline.train_epoch_size(input_pipeline.load_datasets(c.data), c)
  assert examples < 96
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(c, tmp_path / 'big_batch')
  warnings = [r.getMessage() for r in caplog.records if 'batch_size' in r.getMessage()]
  assert warnings == [
    f'train.batch_size=96 is larger than an epoch of training examples ({examples}: '
    f'{examples} images x augment.augment_repeats=1): each step takes them '
    f'{96 / examples:.1f} times over and each "epoch" is one step; set train.batch_size to '
    f'at most {examples}'
  ]
  caplog.clear()
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(
      tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=1), tmp_path / 'small_batch'
    )
  assert not [r for r in caplog.records if 'batch_size' in r.getMessage()]


def test_a_failure_in_the_last_checkpoint_wait_never_hides_the_divergence(
  wbc_raw, wbc_tfds_dir, tmp_path, monkeypatch, caplog
):
  def full_disk(manager):
    raise errors.WriteError(f'writing a checkpoint to {manager.directory} failed: disk full')

  monkeypatch.setattr(checkpointing, 'finish', full_disk)
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, learning_rate=1e30, num_epochs=3)
  with caplog.at_level('ERROR'):
    with pytest.raises(train.TrainingDivergedError, match=r'at step \d+; stopping'):
      train.train_and_evaluate(c, str(tmp_path))
  assert [r.getMessage() for r in caplog.records if 'disk full' in r.getMessage()] == [
    f'While stopping: writing a checkpoint to {tmp_path / "checkpoints"} failed: disk full'
  ]


def test_a_second_ctrl_c_in_the_last_checkpoint_wait_says_what_is_left(
  wbc_raw, wbc_tfds_dir, tmp_path, monkeypatch
):
  c = tiny_config(wbc_raw[0], wbc_tfds_dir, num_epochs=2)
  spe = input_pipeline.steps_per_epoch(input_pipeline.load_datasets(c.data), c)
  real_save, real_finish = checkpointing.save, checkpointing.finish

  def save_then_ctrl_c(*args, **kwargs):
    real_save(*args, **kwargs)
    raise KeyboardInterrupt

  def ctrl_c_again(manager):
    real_finish(manager)  # the checkpoint completes; the second Ctrl-C comes as it does
    raise KeyboardInterrupt

  monkeypatch.setattr(checkpointing, 'save', save_then_ctrl_c)
  monkeypatch.setattr(checkpointing, 'finish', ctrl_c_again)
  with pytest.raises(train.TrainingInterrupted) as err:
    train.train_and_evaluate(c, tmp_path)
  assert str(err.value) == (
    f'interrupted again while the last checkpoint was being written '
    f'(left out if incomplete); last complete checkpoint {spe}; run the '
    f'same command to resume'
  )


def test_a_full_disk_failing_again_in_the_last_checkpoint_wait_is_not_a_second_line(
  monkeypatch, caplog, tmp_path
):
  def full_disk(manager):
    raise errors.WriteError(f'writing a checkpoint to {tmp_path} failed: disk full')

  monkeypatch.setattr(checkpointing, 'finish', full_disk)
  writer = types.SimpleNamespace(close=lambda: None)
  failure = errors.WriteError(f'writing the metrics to {tmp_path} failed: disk full')
  with caplog.at_level('ERROR'):
    train.close_run(writer, types.SimpleNamespace(directory=tmp_path), failure)
  assert not [r for r in caplog.records if 'While stopping' in r.getMessage()]
