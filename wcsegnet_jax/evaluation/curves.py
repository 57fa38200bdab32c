"""Training curves from `metrics.jsonl`: per-epoch loss and test Dice, like the paper's Figs 5-6."""

import pathlib

import numpy as np

from wcsegnet_jax.core import files
from wcsegnet_jax.core import run_files
from wcsegnet_jax.evaluation import reports


def epoch_curves(records: list[dict]) -> dict[str, np.ndarray]:
  """Per-epoch training loss (mean of the logged values in the epoch) and test metrics.

  Returns {'epoch': ..., 'train_loss': ..., '<test key>': ...} with one entry per evaluated
  epoch; keys are those of the JSON lines (e.g. 'test/jiangxi/dice').
  """
  train = [(r['epoch'], r['loss']) for r in records if 'loss' in r and 'epoch' in r]
  tests = [r for r in records if any(k.startswith('test/') for k in r)]
  epochs = np.array([round(r['step'] / _steps_per_epoch(records)) for r in tests], float)
  curves = {'epoch': epochs}
  for key in sorted({k for r in tests for k in r if k.startswith('test/')}):
    curves[key] = np.array([r.get(key, np.nan) for r in tests], float)
  losses = [np.mean([l for e, l in train if np.ceil(e) == epoch] or [np.nan]) for epoch in epochs]
  curves['train_loss'] = np.array(losses, float)
  return curves


def _steps_per_epoch(records: list[dict]) -> float:
  for r in records:
    if 'epoch' in r and r['epoch'] > 0:
      return r['step'] / r['epoch']
  raise ValueError('metrics.jsonl holds no training record with an epoch')


def first_epoch_reaching(curves: dict[str, np.ndarray], key: str, threshold: float):
  """The first evaluated epoch whose `key` is >= threshold, or None."""
  hits = np.nonzero(curves[key] >= threshold)[0]
  return float(curves['epoch'][hits[0]]) if hits.size else None


def plot_runs(workdirs: dict[str, pathlib.Path], path: pathlib.Path) -> None:
  """One PNG: training loss and test Dice per dataset against epochs, a line per run."""
  runs = {name: epoch_curves(run_files.read_metrics(wd)) for name, wd in workdirs.items()}
  dice_keys = sorted({k for c in runs.values() for k in c if k.endswith('/dice')})
  fig = reports.new_figure(figsize=(4.5 * (1 + len(dice_keys)), 3.6))
  axes = np.atleast_1d(fig.subplots(1, 1 + len(dice_keys)))
  for name, c in runs.items():
    axes[0].plot(c['epoch'], c['train_loss'], marker='.', label=name)
    for ax, key in zip(axes[1:], dice_keys):
      if key in c:
        ax.plot(c['epoch'], c[key], marker='.', label=name)
  axes[0].set(title='training loss', xlabel='epoch')
  for ax, key in zip(axes[1:], dice_keys):
    ax.set(title=f'{key.split("/")[1]}: test nucleus Dice', xlabel='epoch')
  axes[0].legend()
  fig.tight_layout()
  files.write_bytes_atomic(path, reports.figure_bytes(fig, dpi=110))
