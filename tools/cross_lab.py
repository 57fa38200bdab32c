r"""The cross-lab protocol: how a model does on smears of a lab it never saw.

Two parts, each a subcommand:

  # (b) A lab's typed fields (fields/ + truth.csv, e.g. ../shared/datasets/bccd_fields): white
  #     cell found, exactly one cell, false cells per field, type right, per-type confusion.
  python tools/cross_lab.py fields --fields_dir=../shared/datasets/bccd_fields \
      [--workdir=runs/cpu | --model=NAME] [--field_scale=0.25|auto] --output=runs/xlab/shipped

  # (c) Fine-tuning on a lab's typed fields, by k-fold cross-validation: fine-tune
  #     (configs/finetune_fields.py) on k-1 folds, score the held-out fold; a learning curve
  #     on fold 0 with --curve training-field counts.
  python tools/cross_lab.py finetune_cv --fields_dir=../shared/datasets/bccd_fields \
      --workdir_prefix=runs/ft_cv [--folds=5] [--curve=10,30]

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

from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.core import logs
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.evaluation import field_scoring
from wcsegnet_jax.inference import model_loading
from wcsegnet_jax.inference import scale_estimate
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.training import typer_fitting

flags.DEFINE_string('fields_dir', None, 'fields: a typed-fields folder (fields/ + truth.csv).')
flags.DEFINE_string('workdir', None, 'fields: a training workdir (else the shipped model).')
flags.DEFINE_string('checkpoint', None, "fields: as predict's --checkpoint.")
flags.DEFINE_string('model', None, "fields: a shipped model by name or folder, as predict's.")
flags.DEFINE_string(
  'field_scale',
  'auto',
  "fields: the scale to the training crops' magnification, or 'auto' (estimated per field).",
)
flags.DEFINE_bool(
  'vote',
  False,
  "fields, finetune_cv: type cells by their nucleus pixels' vote "
  'even where the model has a cell typer.',
)
flags.DEFINE_bool('tta', None, "fields: flip test-time augmentation (default: the model's).")
flags.DEFINE_string('output', None, 'fields: path stem of the .json and .md written.')
flags.DEFINE_string('config', 'configs/cpu.py', 'lodo: the training config file.')
flags.DEFINE_string('workdir_prefix', None, 'lodo: prefix of the two workdirs.')
flags.DEFINE_integer('seed', 0, 'lodo: config.seed of both runs.')
flags.DEFINE_multi_string('override', [], 'lodo, finetune_cv: extra KEY=VALUE config overrides.')
flags.DEFINE_string(
  'finetune_config', 'configs/finetune_fields.py', 'finetune_cv: the fine-tuning config.'
)
flags.DEFINE_integer('folds', 5, 'finetune_cv: number of folds.')
flags.DEFINE_integer('fold_seed', 0, 'finetune_cv: the seed that deals the fields into folds.')
flags.DEFINE_list('curve', [], 'finetune_cv: training-field counts for a learning curve on fold 0.')

FLAGS = flags.FLAGS
WBC_DATASETS = ('jiangxi', 'cellavision')


def score_model(workdir, checkpoint, fields, model=None) -> tuple[list, dict, str]:
  """(outcomes, summary, description) of a model on typed fields."""
  config, variables, source, folder = model_loading.load_model(workdir, checkpoint, model)
  table = classes.table_of(config.data)
  tta = bool(config.eval.tta) if FLAGS.tta is None else FLAGS.tta
  segment = segmenter.Segmenter(config, variables, tta)
  typer = None if FLAGS.vote else cell_typing.load_typer(folder, config, variables)
  scale_of = scale_estimate.scale_function(FLAGS.field_scale, segment)
  bar = tqdm.tqdm(total=len(fields), unit='field')
  outcomes = field_scoring.score_fields(
    segment,
    fields,
    scale_of,
    table,
    cells.CellRules(),
    config.eval.decode,
    progress=lambda _: bar.update(1),
    typer=typer,
  )
  bar.close()
  description = (
    f'{source}, --field_scale={FLAGS.field_scale}, TTA {"on" if tta else "off"}, '
    f'typed by {"its cell typer" if typer else "nucleus-pixel vote"}'
  )
  summary = field_scoring.summarize(
    outcomes, table.cell_types, typer.uncertain_below if typer else None
  )
  return outcomes, summary, description


def write_report(out: pathlib.Path, sections: list[tuple[str, dict]], record: dict) -> None:
  """<out>.json (the record) and <out>.md (one markdown section per (title, summary))."""
  out.parent.mkdir(parents=True, exist_ok=True)
  files.write_json_atomic(out.with_suffix('.json'), record)
  text = '\n'.join(field_scoring.markdown(summary, title) for title, summary in sections)
  files.write_text_atomic(out.with_suffix('.md'), text)
  print(text)


def score_fields_command() -> None:
  """Scores a model on a typed-fields folder; writes <output>.json and .md."""
  fields = typed_fields.read_typed_fields(FLAGS.fields_dir)
  outcomes, summary, description = score_model(FLAGS.workdir, FLAGS.checkpoint, fields, FLAGS.model)
  write_report(
    pathlib.Path(FLAGS.output),
    [(f'{description}, {FLAGS.fields_dir}', summary)],
    {
      'model': description,
      'fields_dir': str(FLAGS.fields_dir),
      'summary': summary,
      'fields': [vars(o) for o in outcomes],
    },
  )


def _finetune(fields, run_dir: pathlib.Path) -> str:
  """Fine-tunes on `fields` in run_dir/run (their folder at run_dir/fields); the workdir."""
  folder = typed_fields.write_subset(fields, run_dir / 'fields')
  workdir = str(run_dir / 'run')
  subprocess.run(
    [
      sys.executable,
      '-m',
      'wcsegnet_jax.main',
      f'--config={FLAGS.finetune_config}',
      f'--workdir={workdir}',
      f'--config.data.fields_dir={folder}',
      '--nofinal_report',
      *[f'--config.{o}' for o in FLAGS.override],
    ],
    check=True,
    env=dict(os.environ),
  )
  return workdir


def fit_estimates(workdir: str) -> dict:
  """The fit's own figures on the lab's cells it was given (`typer_fitting.lab_estimates`)."""
  typer = cell_typing.LinearTyper.load(workdir)
  return {} if typer is None else typer_fitting.lab_estimates(typer.info)


def _estimates_line(estimates: dict) -> str:
  if 'cross_validated' not in estimates:
    return ''
  line = f"; the fit's estimate {estimates['cross_validated']:.3f}"
  if 'before' in estimates:
    line += f' against {estimates["before"]:.3f} before{" (warned)" if estimates["warned"] else ""}'
  return line


def finetune_cv_command() -> None:
  """k-fold fine-tuning on typed fields; the held-out folds pooled, and a learning curve."""
  fields = typed_fields.read_typed_fields(FLAGS.fields_dir)
  folds = typed_fields.stratified_folds(fields, FLAGS.folds, FLAGS.fold_seed)
  prefix = pathlib.Path(FLAGS.workdir_prefix)
  pooled, sections, record = [], [], {'folds': [], 'curve': []}
  for k, held_out in enumerate(folds):
    train_fields = [f for j, fold in enumerate(folds) if j != k for f in fold]
    workdir = _finetune(train_fields, prefix / f'fold{k}')
    outcomes, summary, _ = score_model(workdir, None, held_out)
    pooled += outcomes
    estimates = fit_estimates(workdir)
    record['folds'].append(
      {'fold': k, 'train_fields': len(train_fields), 'summary': summary, 'fit': estimates}
    )
    sections.append(
      (
        f'fold {k}: fine-tuned on {len(train_fields)} fields, scored on {len(held_out)}'
        + _estimates_line(estimates),
        summary,
      )
    )
  table_types = classes.table_of(model_loading.load_workdir_config(workdir).data).cell_types
  typer = cell_typing.LinearTyper.load(workdir)
  record['pooled'] = field_scoring.summarize(
    pooled, table_types, None if typer is None else typer.info.get('uncertain_below')
  )
  sections.insert(
    0,
    (
      f'{FLAGS.folds}-fold cross-validation, held-out folds pooled ({FLAGS.fields_dir})',
      record['pooled'],
    ),
  )
  train_fields = [f for fold in folds[1:] for f in fold]
  for n in (int(v) for v in FLAGS.curve):
    subset = typed_fields.stratified_folds(train_fields, max(1, round(len(train_fields) / n)))[0]
    workdir = _finetune(subset, prefix / f'curve{n}')
    _, summary, _ = score_model(workdir, None, folds[0])
    estimates = fit_estimates(workdir)
    record['curve'].append({'train_fields': len(subset), 'summary': summary, 'fit': estimates})
    sections.append(
      (
        f'learning curve: {len(subset)} training fields, scored on fold 0'
        + _estimates_line(estimates),
        summary,
      )
    )
  write_report(prefix.with_name(prefix.name + '_summary'), sections, record)


def _main_command(*args: str) -> None:
  command = [sys.executable, '-m', 'wcsegnet_jax.main', f'--config={FLAGS.config}', *args]
  print('+', ' '.join(command), flush=True)
  subprocess.run(command, check=True, env=dict(os.environ))


def lodo_command() -> None:
  """Trains on each WBC dataset alone and evaluates on both test splits."""
  extra = [f'--config.{o}' for o in FLAGS.override]
  data = config_lib.load_config_file(FLAGS.config).data
  repeats = dict(zip(data.datasets, data.dataset_repeats or (1,) * len(data.datasets)))
  for train_on in WBC_DATASETS:
    workdir = f'{FLAGS.workdir_prefix}_from_{train_on}'
    # Each dataset as often per epoch as in the config's runs on both (CellaVision's 47
    # training images 5 times in the CPU recipe), so a run on it alone is not a short one.
    one = [
      f'--workdir={workdir}',
      f'--config.seed={FLAGS.seed}',
      f'--config.data.datasets=("{train_on}",)',
      f'--config.data.dataset_repeats=({repeats.get(train_on, 1)},)',
    ]
    _main_command(*one, *extra)
    for test_on in WBC_DATASETS:
      if test_on != train_on:
        # data.datasets is free at evaluation: the same split seed gives the same test split.
        _main_command(
          f'--workdir={workdir}',
          '--mode=evaluate',
          f'--config.seed={FLAGS.seed}',
          f'--config.data.datasets=("{test_on}",)',
          '--config.data.dataset_repeats=()',
          *extra,
        )


def main(argv):
  if len(argv) != 2 or argv[1] not in ('fields', 'lodo', 'finetune_cv'):
    raise app.UsageError('give one subcommand: fields, lodo or finetune_cv')
  if FLAGS.model and argv[1] != 'fields':
    raise app.UsageError(f'--model is for fields; {argv[1]} starts from its config')
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    if argv[1] == 'fields':
      if not (FLAGS.fields_dir and FLAGS.output):
        raise app.UsageError('fields needs --fields_dir and --output')
      score_fields_command()
    elif not FLAGS.workdir_prefix:
      raise app.UsageError(f'{argv[1]} needs --workdir_prefix')
    elif argv[1] == 'lodo':
      lodo_command()
    else:
      if not FLAGS.fields_dir:
        raise app.UsageError('finetune_cv needs --fields_dir')
      finetune_cv_command()


if __name__ == '__main__':
  app.run(main)
