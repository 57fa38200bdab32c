r"""The cross-lab protocol: how a model does on smears of a lab it never saw.

Two parts, each a subcommand:

  # (b) A lab's typed fields (fields/ + truth.csv, e.g. ../shared/datasets/bccd_fields): white
  #     cell found, exactly one cell, false cells per field, type right, per-type confusion.
  python tools/cross_lab.py fields --fields_dir=../shared/datasets/bccd_fields \
      [--workdir=runs/cpu | --model=NAME] [--field_scale=0.25|auto] --output=runs/xlab/shipped

  # (a) Leave one dataset out on the WBC Image Dataset: train a config on Jiangxi alone and test
  #     it on CellaVision's test split, and the reverse (two training runs, then evaluations).
  python tools/cross_lab.py lodo --config=configs/cpu.py --workdir_prefix=runs/lodo_cpu_s0 \
      [--seed=0] [--override=train.num_epochs=16 ...]

`fields` writes `<output>.json` (every field's outcome and the summary) and `<output>.md`;
`lodo` leaves two workdirs, `<prefix>_from_jiangxi` and `<prefix>_from_cellavision`, each with
its own test split's report and the other dataset's under eval/. docs/results.md has the figures.
"""

import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags
import tqdm

from wcsegnet_jax import cells
from wcsegnet_jax import classes
from wcsegnet_jax import errors
from wcsegnet_jax import field_scoring
from wcsegnet_jax import files
from wcsegnet_jax import logs
from wcsegnet_jax import predict
from wcsegnet_jax import scale_estimate
from wcsegnet_jax import segmenter
from wcsegnet_jax.data import typed_fields

flags.DEFINE_string('fields_dir', None, 'fields: a typed-fields folder (fields/ + truth.csv).')
flags.DEFINE_string('workdir', None, 'fields: a training workdir (else the shipped model).')
flags.DEFINE_string('checkpoint', None, "fields: as predict's --checkpoint.")
flags.DEFINE_string('field_scale', 'auto', "fields: the scale to the training crops' "
                    "magnification, or 'auto' (estimated per field).")
flags.DEFINE_bool('tta', None, "fields: flip test-time augmentation (default: the model's).")
flags.DEFINE_string('output', None, 'fields: path stem of the .json and .md written.')
flags.DEFINE_string('config', 'configs/cpu.py', 'lodo: the training config file.')
flags.DEFINE_string('workdir_prefix', None, 'lodo: prefix of the two workdirs.')
flags.DEFINE_integer('seed', 0, 'lodo: config.seed of both runs.')
flags.DEFINE_multi_string('override', [], 'lodo: extra KEY=VALUE config overrides.')

FLAGS = flags.FLAGS
WBC_DATASETS = ('jiangxi', 'cellavision')


def score_fields_command() -> dict:
  """Scores a model on a typed-fields folder; writes <output>.json and .md; returns the summary."""
  config, variables, source = predict.load_model(FLAGS.workdir, FLAGS.checkpoint)
  table = classes.table_of(config.data)
  fields = typed_fields.read_typed_fields(FLAGS.fields_dir)
  tta = bool(config.eval.tta) if FLAGS.tta is None else FLAGS.tta
  segment = segmenter.Segmenter(config, variables, tta)
  scale_of = scale_estimate.scale_function(FLAGS.field_scale, segment)
  bar = tqdm.tqdm(total=len(fields), unit='field')
  outcomes = field_scoring.score_fields(segment, fields, scale_of, table, cells.CellRules(),
                                        config.eval.decode, progress=lambda _: bar.update(1))
  bar.close()
  summary = field_scoring.summarize(outcomes, table.cell_types)
  title = (f'{source}, --field_scale={FLAGS.field_scale}, TTA {"on" if tta else "off"}, '
           f'{FLAGS.fields_dir}')
  out = pathlib.Path(FLAGS.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  files.write_json_atomic(out.with_suffix('.json'), {
      'model': source, 'field_scale': FLAGS.field_scale, 'tta': tta,
      'fields_dir': str(FLAGS.fields_dir), 'summary': summary,
      'fields': [vars(o) for o in outcomes]})
  text = field_scoring.markdown(summary, title)
  files.write_text_atomic(out.with_suffix('.md'), text)
  print(text)
  return summary


def _main_command(*args: str) -> None:
  command = [sys.executable, '-m', 'wcsegnet_jax.main', f'--config={FLAGS.config}', *args]
  print('+', ' '.join(command), flush=True)
  subprocess.run(command, check=True, env=dict(os.environ))


def lodo_command() -> None:
  """Trains on each WBC dataset alone and evaluates on both test splits."""
  extra = [f'--config.{o}' for o in FLAGS.override]
  for train_on in WBC_DATASETS:
    workdir = f'{FLAGS.workdir_prefix}_from_{train_on}'
    one = [f'--workdir={workdir}', f'--config.seed={FLAGS.seed}',
           f'--config.data.datasets=("{train_on}",)', '--config.data.dataset_repeats=()']
    _main_command(*one, *extra)
    for test_on in WBC_DATASETS:
      if test_on != train_on:
        # data.datasets is free at evaluation: the same split seed gives the same test split.
        _main_command(f'--workdir={workdir}', '--mode=evaluate', f'--config.seed={FLAGS.seed}',
                      f'--config.data.datasets=("{test_on}",)',
                      '--config.data.dataset_repeats=()', *extra)


def main(argv):
  if len(argv) != 2 or argv[1] not in ('fields', 'lodo'):
    raise app.UsageError('give one subcommand: fields or lodo')
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    if argv[1] == 'fields':
      if not (FLAGS.fields_dir and FLAGS.output):
        raise app.UsageError('fields needs --fields_dir and --output')
      score_fields_command()
    else:
      if not FLAGS.workdir_prefix:
        raise app.UsageError('lodo needs --workdir_prefix')
      lodo_command()


if __name__ == '__main__':
  app.run(main)
