"""Where training metrics go: TensorBoard event files and a JSON-lines file in the workdir."""

import json
import math
import pathlib
import time

from absl import logging
import numpy as np
import tensorboardX

from wcsegnet_jax import files

METRICS_FILE = 'metrics.jsonl'


class MetricWriter:
  """Writes scalars to TensorBoard, `workdir/metrics.jsonl` and the log (process 0 only)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True, resume_step: int | None = None):
    """`resume_step`: the checkpoint a run resumed from; records logged after it (by the run
    that was interrupted, and about to be logged again) are dropped."""
    self.enabled = enabled
    if enabled:
      path = workdir / METRICS_FILE
      if resume_step is not None and path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)['step'] <= resume_step]
        files.write_text_atomic(path, ''.join(line + '\n' for line in kept))
      purge = {'purge_step': resume_step + 1} if resume_step is not None else {}
      self._tb = tensorboardX.SummaryWriter(str(workdir / 'tensorboard'), **purge)
      self._jsonl = open(path, 'a')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    record = {'step': step, 'time': time.time()}
    record.update({k: v if math.isfinite(v) else str(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    logging.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in scalars.items()))

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class StepTimer:
  """Images per second between successive calls."""

  def __init__(self, step: int):
    self.step, self.time = step, time.perf_counter()

  def rate(self, step: int, batch_size: int) -> float:
    now = time.perf_counter()
    value = (step - self.step) * batch_size / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return value


def mean_of(history: list[tuple[int, dict]]) -> dict[str, float]:
  """Means of each metric over (step, metrics) pairs fetched from the device."""
  keys = history[0][1].keys()
  return {k: float(np.mean([m[k] for _, m in history])) for k in keys}


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """The JSON-lines records of a workdir (for curves and tests)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
