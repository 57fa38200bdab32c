"""Tests of wcsegnet_jax.metric_writers: progress by finished steps, the CPU time warning."""

import pytest

from wcsegnet_jax.core import run_files
from wcsegnet_jax.training import metric_writers


class FakeBar:
  def __init__(self):
    self.n, self.closed = 0, False

  def update(self, k):
    self.n += k

  def close(self):
    self.closed = True


def test_progress_counts_only_steps_whose_outputs_are_ready():
  bar, waited = FakeBar(), []
  progress = metric_writers.FinishedStepProgress(bar, in_flight=1, wait=waited.append)
  progress.dispatched('step0')
  assert bar.n == 0 and waited == []  # dispatched, not finished: not counted
  progress.dispatched('step1')
  assert waited == ['step0'] and bar.n == 1  # step 0 waited for before it was counted
  progress.dispatched('step2')
  assert waited == ['step0', 'step1'] and bar.n == 2
  progress.close()
  assert waited == ['step0', 'step1', 'step2'] and bar.n == 3 and bar.closed


def test_progress_with_more_steps_in_flight():
  bar, waited = FakeBar(), []
  progress = metric_writers.FinishedStepProgress(bar, in_flight=3, wait=waited.append)
  for i in range(5):
    progress.dispatched(i)
  assert waited == [0, 1] and bar.n == 2


def test_progress_waits_on_real_jax_outputs():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  bar = FakeBar()
  progress = metric_writers.FinishedStepProgress(bar)
  for i in range(3):
    progress.dispatched({'loss': jnp.float32(i) * 2})
  progress.close()
  assert bar.n == 3


@pytest.mark.parametrize(
  'seconds_per_step,steps,backend,expected',
  [
    (48.0, 15_100, 'cpu', '8.4 days'),  # the paper's config on 2 cores
    (2.0, 3_600, 'cpu', '2.0 hours'),
    (0.5, 7_000, 'cpu', None),  # under an hour: no warning
    (48.0, 15_100, 'gpu', None),  # only without an accelerator
  ],
)
def test_training_time_warning(seconds_per_step, steps, backend, expected):
  warning = metric_writers.training_time_warning(seconds_per_step, steps, backend, 'wcseg')
  if expected is None:
    assert warning is None
  else:
    assert expected in warning and 'configs/cpu.py' in warning and '\n' not in warning


def test_training_time_warning_for_the_cpu_recipe_itself():
  warning = metric_writers.training_time_warning(2.0, 3_600, 'cpu', 'cpu')
  assert '2.0 hours' in warning and 'configs/cpu.py' not in warning and 'num_epochs' in warning


def test_elapsed_seconds_in_metric_lines(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path, started_at=0.0)
  writer.write(1, {'loss': 1.0})
  writer.close()
  (record,) = run_files.read_metrics(tmp_path)
  assert record['elapsed_seconds'] == pytest.approx(record['time'], abs=1e-2)


def test_resume_drops_a_partial_last_line(tmp_path):
  """A run killed mid-write leaves half a JSON line; the resume keeps the whole ones."""
  (tmp_path / run_files.METRICS_FILE).write_text(
    '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.5}\n{"step": 6, "lo'
  )
  metric_writers.MetricWriter(tmp_path, enabled=True, resume_step=4, started_at=0.0).close()
  assert [r['step'] for r in run_files.read_metrics(tmp_path)] == [2, 4]


def test_reading_a_killed_runs_metrics_skips_its_partial_last_line(tmp_path):
  """A run killed mid-write leaves half a JSON line: curves and summaries read the whole ones."""
  (tmp_path / run_files.METRICS_FILE).write_text(
    '{"step": 2, "loss": 1.0}\n\n{"step": 4, "loss": 0.5}\n{"step": 6, "lo'
  )
  assert [r['step'] for r in run_files.read_metrics(tmp_path)] == [2, 4]


def test_log_line_is_short_and_keeps_each_datasets_dice():
  scalars = {
    'grad_norm': 1.2346,
    'loss': 0.31234,
    'pixel_accuracy': 0.9312,
    'learning_rate': 1e-4,
    'images_per_second': 45.67,
    'epoch': 2.0,
  }
  for name in ('jiangxi', 'cellavision'):
    scalars.update(
      {
        f'test/{name}/{k}': 0.95
        for k in ('loss', 'accuracy', 'dice', 'miou', 'cell_dice', 'cell_accuracy')
      }
    )
  scalars['test_dice'] = 0.95
  line = metric_writers.log_line(40, scalars)
  assert line.startswith(
    'step 40: grad 1.235, loss 0.3123, acc 0.9312, lr 0.0001, img/s 45.67, '
    'epoch 2, mean test dice 0.95'
  )
  assert line.endswith(
    'jiangxi dice 0.9500 cell acc 0.9500, cellavision dice 0.9500 cell acc 0.9500'
  )
  assert len(line) < 200
