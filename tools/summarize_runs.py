"""Markdown tables (mean +- std over seeds) of evaluated workdirs, for docs/results.md.

  python tools/summarize_runs.py --datasets=jiangxi,cellavision \
      wcseg='runs/cpu_wcseg_s*' unet_relu='runs/cpu_unet_relu_s*'
"""

import glob
import pathlib

from absl import app
from absl import flags

from wcsegnet_jax.core import errors
from wcsegnet_jax.evaluation import run_summary

flags.DEFINE_list('datasets', ['jiangxi', 'cellavision'], 'Datasets to tabulate.')
flags.DEFINE_bool('tta', False, 'Read the test-time-augmented evaluations (eval/<dataset>-tta).')
flags.DEFINE_string(
  'variant',
  '',
  'Read eval/<dataset>[-tta]<variant>: "-rot" (with --tta: '
  'eval.tta_rotations), "-raw" (a run\'s own parameters where it kept their '
  'average), "-by_part" (eval.decode), "-central7" (eval.central_cell_radius), in that order, '
  'e.g. "-raw-by_part"',
)

TIME_TABLE = (
  'time to test Dice 0.95 / 0.96 / 0.965 (seconds from the start, data and compile included)'
)
TABLES = {
  'paper metrics (nucleus vs background)': run_summary.PAPER_KEYS,
  # The runs' own classes (whole-cell Dice/IoU where they have a cytoplasm class).
  'per-class Dice and cell-type accuracy': None,
  TIME_TABLE: tuple(f'seconds_to_{t}' for t in run_summary.DICE_THRESHOLDS) + ('train_seconds',),
  'epochs to test Dice 0.95 / 0.96 / 0.965': tuple(
    f'epochs_to_{t}' for t in run_summary.DICE_THRESHOLDS
  ),
}


def main(argv):
  with errors.user_errors_as_messages():
    _print_tables(argv[1:])


def _print_tables(patterns):
  groups = {}
  if not patterns:
    raise errors.UsageError("give one or more NAME=GLOB, e.g. cpu='runs/cpu_s*'")
  for arg in patterns:
    name, sep, pattern = arg.partition('=')
    if not sep:
      raise errors.UsageError(f"{arg}: give NAME=GLOB, e.g. cpu='runs/cpu_s*'")
    groups[name] = sorted(pathlib.Path(p) for p in glob.glob(pattern) if pathlib.Path(p).is_dir())
    if not groups[name]:
      raise errors.UsageError(f'{pattern} matches no workdir')
  for dataset in flags.FLAGS.datasets:
    summary = run_summary.summarize(groups, dataset, flags.FLAGS.tta, flags.FLAGS.variant)
    for title, keys in TABLES.items():
      keys = keys or run_summary.class_metric_keys(summary)
      tta = (', TTA' if flags.FLAGS.tta else '') + flags.FLAGS.variant
      print(
        f'\n**{dataset}{tta}: {title}** (runs: '
        + ', '.join(f'{n} x{len(w)}' for n, w in groups.items())
        + ')\n'
      )
      digits = 1 if 'time' in title or 'epochs' in title else 4
      print(run_summary.markdown(summary, keys, digits))


if __name__ == '__main__':
  app.run(main)
