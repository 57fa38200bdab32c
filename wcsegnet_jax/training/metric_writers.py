"""Where training metrics go: TensorBoard event files and a JSON-lines file in the workdir."""

import collections
import contextlib
import json
import math
import pathlib
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import tensorboardX

from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files

METRICS_FILE = 'metrics.jsonl'


def _step_of(line: str) -> int | None:
  """The step of a metrics.jsonl line; None for a blank or partial one (a run killed mid-write)."""
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return None


class MetricWriter:
  """Writes scalars to TensorBoard, `workdir/metrics.jsonl` and the log (process 0 only)."""

  def __init__(
    self,
    workdir: pathlib.Path,
    enabled: bool = True,
    resume_step: int | None = None,
    started_at: float | None = None,
  ):
    """`resume_step`: the checkpoint a run resumed from; records logged after it (by the run
    that was interrupted, and about to be logged again) are dropped. `started_at` (a
    `time.time()`): each JSON line gets `elapsed_seconds` since then, for time-to-accuracy."""
    self.enabled, self.started_at = enabled, started_at
    if enabled:
      path = workdir / METRICS_FILE
      if resume_step is not None and path.exists():
        kept = [
          line
          for line in path.read_text().splitlines()
          if _step_of(line) is not None and _step_of(line) <= resume_step
        ]
        files.write_text_atomic(path, ''.join(line + '\n' for line in kept))
      purge = {'purge_step': resume_step + 1} if resume_step is not None else {}
      self._tb = tensorboardX.SummaryWriter(str(workdir / 'tensorboard'), **purge)
      self._jsonl = open(path, 'a')
    self.workdir = workdir

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.time()
    record = {'step': step, 'time': now}
    if self.started_at is not None:
      record['elapsed_seconds'] = round(now - self.started_at, 3)
    record.update({k: v if math.isfinite(v) else str(v) for k, v in scalars.items()})
    with self._storage_errors_as_write_errors():
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    logging.info('%s', log_line(step, scalars))

  def close(self) -> None:
    if self.enabled:
      with self._storage_errors_as_write_errors():
        try:
          self._tb.close()
        finally:
          self._jsonl.close()

  @contextlib.contextmanager
  def _storage_errors_as_write_errors(self):
    """A full disk or a lost permission is one line naming the workdir (the lines written
    before stay), not tensorboardX's traceback."""
    try:
      yield
    except OSError as e:
      raise errors.WriteError(
        f'writing the metrics to {self.workdir} failed: {e}; what was '
        f'written before (metrics, checkpoints) is intact'
      ) from e


# How the log names the training scalars; test scalars show only these, per dataset (all of
# them are in metrics.jsonl and TensorBoard).
_SHORT_NAMES = {
  'loss': 'loss',
  'pixel_accuracy': 'acc',
  'grad_norm': 'grad',
  'learning_rate': 'lr',
  'images_per_second': 'img/s',
  'epoch': 'epoch',
  'test_dice': 'mean test dice',
}
_TEST_SHOWN = {'dice': 'dice', 'cell_accuracy': 'cell acc'}


def log_line(step: int, scalars: dict[str, float]) -> str:
  """One short log line: the training scalars by short name, and per test dataset its nucleus
  Dice and cell accuracy ('test/<dataset>/<metric>' keys)."""
  parts, tests = [], {}
  for key, value in scalars.items():
    if key.startswith('test/') and key.count('/') == 2:
      _, dataset, metric = key.split('/')
      if metric in _TEST_SHOWN:
        tests.setdefault(dataset, []).append(f'{_TEST_SHOWN[metric]} {value:.4f}')
    else:
      parts.append(f'{_SHORT_NAMES.get(key, key)} {value:.4g}')
  parts += [f'{dataset} ' + ' '.join(shown) for dataset, shown in tests.items()]
  return f'step {step}: ' + ', '.join(parts)


class StepTimer:
  """Images per second between successive calls."""

  def __init__(self, step: int):
    self.step, self.time = step, time.perf_counter()

  def rate(self, step: int, batch_size: int) -> float:
    now = time.perf_counter()
    value = (step - self.step) * batch_size / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return value


def mean_of(names: list[str], values: np.ndarray) -> dict[str, float]:
  """Means over steps of each metric: `values` (steps, len(names)), one column per name."""
  means = np.asarray(values, np.float64).mean(axis=0)
  return {name: float(mean) for name, mean in zip(names, means)}


class FinishedStepProgress:
  """Advances a progress bar by *finished* steps, not dispatched ones.

  JAX dispatches a step and returns at once; a bar moved at dispatch runs ahead of the device
  and its ETA is wrong by orders of magnitude when steps are slow (a CPU). Here the bar moves
  when a step's outputs are ready, keeping `in_flight` steps queued on the device so waiting
  never idles it.
  """

  def __init__(
    self, bar: Any, in_flight: int = 1, wait: Callable[[Any], Any] = jax.block_until_ready
  ):
    self.bar, self.in_flight, self.wait = bar, in_flight, wait
    self.pending = collections.deque()

  def dispatched(self, step_outputs: Any) -> None:
    """Call after dispatching a step, with any of its outputs."""
    self.pending.append(step_outputs)
    while len(self.pending) > self.in_flight:
      self.wait(self.pending.popleft())
      self.bar.update(1)

  def close(self) -> None:
    """Waits for the steps still queued, counts them, and closes the bar."""
    while self.pending:
      self.wait(self.pending.popleft())
      self.bar.update(1)
    self.bar.close()

  def abandon(self) -> None:
    """Closes the bar at once (the run is stopping), so what is printed next gets a line of
    its own instead of landing on the bar's."""
    self.pending.clear()
    self.bar.close()


def training_time_warning(
  seconds_per_step: float, steps_left: int, backend: str, config_name: str, limit_s: float = 3600.0
) -> str | None:
  """One line for a run that would train for over `limit_s` without an accelerator, else None.

  The estimate counts train steps only (evaluation and checkpoints add to it): a lower bound.
  """
  estimate = seconds_per_step * steps_left
  if backend != 'cpu' or estimate <= limit_s:
    return None
  line = (
    f'this run needs about {_duration(estimate)} or more on this CPU ({seconds_per_step:.2f} '
    f's per step x {steps_left} steps)'
  )
  if config_name == 'cpu':  # already the CPU recipe: only a smaller run would help
    return line + '; fewer --config.train.num_epochs would shorten it.'
  # Its figures (score, time) are in docs/results.md, not copied here to go stale.
  return (
    line + ': its config is sized for a GPU. On a CPU use --config=configs/cpu.py, '
    'the CPU recipe (its scores and time: docs/results.md).'
  )


def _duration(seconds: float) -> str:
  if seconds >= 2 * 86400:
    return f'{seconds / 86400:.1f} days'
  if seconds >= 3600:
    return f'{seconds / 3600:.1f} hours'
  return f'{seconds / 60:.0f} minutes'
