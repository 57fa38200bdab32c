"""Mean +- std over seeds of evaluated runs: the rows of docs/results.md.

Each run is a workdir evaluated with `--mode=evaluate` (its `eval/<dataset>/metrics.json`).
"""

import json
import pathlib

import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.evaluation import curves
from wcsegnet_jax.evaluation import reports

PAPER_KEYS = ('accuracy', 'precision', 'dice', 'miou')
DICE_TARGET = 0.96
# Time-to-accuracy thresholds of test nucleus Dice (docs/benchmarks.md); the paper's is 0.9653.
DICE_THRESHOLDS = (0.95, 0.96, 0.965)


def run_metrics(
  workdir: pathlib.Path, dataset: str, tta: bool = False, variant: str = ''
) -> dict[str, float | None]:
  """One run's numbers for one dataset: the paper's metrics, per-class Dice, cell accuracy,
  and the first epoch (and wall-clock seconds) at which its test Dice reached DICE_TARGET.

  The report read is eval/<dataset>[-tta]<variant>/ (`evaluate.report_folder`), e.g. variant
  '-raw' or '-by_part'."""
  path = workdir / 'eval' / ((f'{dataset}-tta' if tta else dataset) + variant) / 'metrics.json'
  if not path.exists():
    settings = ' --config.eval.tta=True' if tta else ''
    if variant:
      settings += f' and the settings that {variant!r} names'
    raise errors.DataError(
      f'{path} does not exist: evaluate {workdir} first (--mode=evaluate{settings})'
    )
  try:
    out = _report_numbers(json.loads(path.read_text()))
  except (ValueError, KeyError, TypeError) as e:
    raise errors.DataError(f'{path}: not an evaluation report ({type(e).__name__}: {e})') from e
  records = _training_records(workdir)
  c = curves.epoch_curves(records)
  key = f'test/{dataset}/dice'
  epoch = curves.first_epoch_reaching(c, key, DICE_TARGET) if key in c else None
  out['epochs_to_target'] = epoch
  out['seconds_to_target'] = _seconds_to(records, key, DICE_TARGET)
  out['train_seconds'] = records[-1]['time'] - records[0]['time'] if 'time' in records[0] else None
  for threshold in DICE_THRESHOLDS:
    out[f'epochs_to_{threshold}'] = (
      curves.first_epoch_reaching(c, key, threshold) if key in c else None
    )
    out[f'seconds_to_{threshold}'] = _seconds_to(records, key, threshold)
  return out


def _report_numbers(m: dict) -> dict[str, float | None]:
  """The paper's metrics, per-class Dice and cell accuracy of an evaluation's metrics.json."""
  out = {k: m['paper'][k] for k in PAPER_KEYS}
  support = m['per_class'].get('support', {})
  # The run's classes (metrics.json records them; older ones had the paper's four).
  table = classes.table_from_names(m.get('classes', classes.PAPER_TABLE.names))
  out.update(
    {
      f'dice_{c}': (None if support.get(c) == 0 else m['per_class']['dice'][c])
      for c in table.names[1:]
    }
  )  # None: no such cell in the test split
  out.update({k: m['paper'][k] for k in ('cell_dice', 'cell_iou') if k in m['paper']})
  out['cell_accuracy'] = m['cells']['cell_accuracy']
  return out


def _training_records(workdir: pathlib.Path) -> list[dict]:
  """The run's training log (`run_files.METRICS_FILE`); one line naming it where it has none."""
  path = workdir / run_files.METRICS_FILE
  records = run_files.read_metrics(workdir) if path.is_file() else []
  if not records:
    raise errors.DataError(f'{path}: no training records (not a training workdir?)')
  return records


def _seconds_to(records: list[dict], key: str, threshold: float) -> float | None:
  """Seconds from the run's start (`elapsed_seconds`; else its first record) to the first
  record whose `key` reaches `threshold`."""
  timed = [r for r in records if 'time' in r]
  hits = [r for r in timed if r.get(key, -1) >= threshold]
  if not hits:
    return None
  if 'elapsed_seconds' in hits[0]:
    return hits[0]['elapsed_seconds']
  return hits[0]['time'] - timed[0]['time']


def mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
  """Mean, std (ddof 0) and count of the defined values; None if there are none."""
  values = [v for v in values if v is not None]
  return (float(np.mean(values)), float(np.std(values)), len(values)) if values else None


def summarize(
  groups: dict[str, list[pathlib.Path]], dataset: str, tta: bool = False, variant: str = ''
) -> dict[str, dict]:
  """{group name: {metric: (mean, std, n) or None}} over the group's runs."""
  out = {}
  for name, workdirs in groups.items():
    rows = [run_metrics(wd, dataset, tta, variant) for wd in workdirs]
    out[name] = {k: mean_std([r.get(k) for r in rows]) for k in rows[0]}
    out[name][RUNS] = len(rows)
  return out


RUNS = 'runs'  # summarize's key for how many runs a group has


def class_metric_keys(summary: dict[str, dict]) -> tuple[str, ...]:
  """Per-class Dice columns of every class the groups' runs have, in order, then the whole-cell
  metrics where present, then cell-type accuracy."""
  keys = []
  for row in summary.values():
    keys += [
      k for k in row if (k.startswith('dice_') or k in ('cell_dice', 'cell_iou')) and k not in keys
    ]
  return tuple(sorted(keys, key=lambda k: k.startswith('cell_'))) + ('cell_accuracy',)


def format_mean_std(cell, digits: int = 4, runs: int | None = None) -> str:
  """'mean +- std' over the runs that have the value, saying so when not all of `runs` do."""
  if cell is None:
    return reports.format_number(None)
  mean, std, n = cell
  text = reports.format_number(mean, digits)
  if n > 1:
    text += f' +- {reports.format_number(std, digits)}'
  return text if runs is None or n == runs else f'{text} ({n} of {runs} runs)'


def markdown(summary: dict[str, dict], keys: tuple[str, ...], digits: int = 4) -> str:
  """One row per group, one right-aligned column per metric of `keys`."""
  rows = [
    [name] + [format_mean_std(row[k], digits, row.get(RUNS)) for k in keys]
    for name, row in summary.items()
  ]
  return reports.markdown_table(['run', *keys], rows, right_aligned=range(1, len(keys) + 1))
