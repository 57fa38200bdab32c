r"""Cross-validates variants of fitting the cell typer on a lab's typed fields, in seconds each.

  python tools/typer_variants.py --fields_dir=../shared/datasets/bccd_fields \
      --cache=runs/typer_variants.npz [--model=differential] [--fold_seeds=0,1]

`configs/finetune_fields.py` fits the shipped model's cell typer (wcsegnet_jax/cells/
cell_typing.py) on the WBC Image Dataset's training cells and a lab's typed cells; `cross_lab.py
finetune_cv` scores that end to end (~2 minutes a fold). This tool computes every cell's features
once (cached in --cache: the training crops in `typer.views` views, each lab cell at its field's
estimated scale times 0.85, 1 and 1.15, each plain, mirrored, flipped and turned) and then scores
each variant by the same deal of the fields into folds (`typed_fields.stratified_folds`): type
right over all lab cells, per fold seed. A lab cell is cut where the model found it, as in the
fit; cells it missed are cut at their box's centre (end to end they count as wrong).
Needs WCSEG_DATA_DIR (or --raw_dir) for the training cells.
"""

import dataclasses
import os
import pathlib
import zipfile

from absl import app
from absl import flags
import numpy as np

from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import logs
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.inference import fields as fields_lib
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import shipped_model
from wcsegnet_jax.training import typer_fitting
from configs import finetune_fields

flags.DEFINE_string('fields_dir', None, 'A typed-fields folder (fields/ + truth.csv).')
flags.DEFINE_string('model', 'differential', 'A shipped model: its name or folder.')
flags.DEFINE_string('raw_dir', None, 'The WBC Image Dataset (default: $WCSEG_DATA_DIR).')
flags.DEFINE_string('cache', None, 'The features file: read if it exists, else written.')
flags.DEFINE_list('fold_seeds', ['0', '1'], 'Seeds dealing the fields into folds.')
flags.DEFINE_integer('folds', 5, 'Number of folds.')
FLAGS = flags.FLAGS

SCALES = (0.85, 1.0, 1.15)  # times the field's estimated scale
TURNS = ('plain', 'mirrored', 'flipped', 'turned')
PLAIN = SCALES.index(1.0) * len(TURNS)  # the view the fit itself uses


def lab_views(segment: segmenter.Segmenter, typed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(crops (cells, views, s, s, 3), type index per cell, field name per cell) of a lab's cells,
  each in len(SCALES) * len(TURNS) views, cut as `typer_fitting.field_crops` cuts them."""
  config, plain = segment.config, segment.without_tta()
  table = classes.table_of(config.data)
  crops, labels, groups = [], [], []
  for field in typed:
    image = image_files.read_rgb(field.path)
    scale, matches = typer_fitting.found_at_scale(plain, field, image)
    views = [[] for _ in field.cells]
    for factor in SCALES:
      resized = fields_lib.resize_field(image, scale * factor)
      centres = [
        typer_fitting.cut_centre(truth, match, scale * factor)
        for truth, match in zip(field.cells, matches)
      ]
      cut = cell_typing.cell_crops(resized, centres, segment.size, config.data, 'field')
      for k, crop in enumerate(cut):
        views[k] += typer_fitting.turned_views(crop, len(TURNS))
    crops += [np.stack(v) for v in views]
    labels += [list(table.cell_types).index(truth.cell_type) for truth in field.cells]
    groups += [field.path.name] * len(field.cells)
  return np.stack(crops), np.array(labels, np.int32), np.array(groups, str)


def fitting_config():
  """The model's config with the typer section configs/finetune_fields.py fits with."""
  config = shipped_model.load_config(shipped_model.model_dir(FLAGS.model))
  config.data.raw_dir = FLAGS.raw_dir or os.environ.get('WCSEG_DATA_DIR', '')
  config.typer.update(finetune_fields.get_config().typer)
  return config


def build_cache(path: pathlib.Path) -> None:
  """The features of the model's training cells and of the lab's cells, saved at `path`."""
  folder = shipped_model.model_dir(FLAGS.model)
  config = fitting_config()
  variables = shipped_model.load_variables(config, folder)
  table = classes.table_of(config.data)
  datasets = input_pipeline.load_datasets(config.data)
  train = typer_fitting.dataset_crops(datasets, 'train', config, config.typer.views, config.seed)
  typed = typed_fields.read_typed_fields(FLAGS.fields_dir, cell_types=table.cell_types)
  crops, labels, groups = lab_views(segmenter.Segmenter(config, variables, tta=False), typed)
  features = cell_typing.CellFeatures(config, variables, levels=cell_typing.levels_of(config))
  lab_x, _ = features(crops.reshape(-1, *crops.shape[2:]))
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
    path,
    train_x=features(train.crops)[0],
    train_y=train.labels,
    lab_x=lab_x.reshape(len(labels), crops.shape[1], -1),
    lab_y=labels,
    lab_groups=groups,
    cell_types=np.array(table.cell_types),
    l2=config.typer.l2,
    field_weight=config.typer.field_weight,
    levels=np.array(features.levels, str),
    crop_color=config.typer.crop_color,
  )


CACHED = (
  'train_x',
  'train_y',
  'lab_x',
  'lab_y',
  'lab_groups',
  'cell_types',
  'l2',
  'field_weight',
  'levels',
  'crop_color',
)


def read_cache(path: pathlib.Path) -> dict:
  """The arrays `build_cache` wrote; one line naming the file where it is not such a file."""
  try:
    with np.load(path) as arrays:
      data = {k: arrays[k] for k in CACHED}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise errors.UserError(
      f'{path}: not a features file of this tool ({type(e).__name__}: {e}); remove it to '
      f'compute the features again'
    ) from e
  return data


def check_fitting(path: pathlib.Path, data: dict, config) -> None:
  """One line naming the cache where its features were pooled or coloured otherwise than the
  fit now would (`fitting_config`)."""
  levels = tuple(sorted(cell_typing.levels_of(config)))
  cached = (tuple(str(v) for v in data['levels']), str(data['crop_color']))
  if cached != (levels, config.typer.crop_color):
    raise errors.UserError(
      f'{path}: features of stages {list(cached[0])} and colour step {cached[1]!r}, the fit now '
      f'uses {list(levels)} and {config.typer.crop_color!r}; remove it to compute them again'
    )


@dataclasses.dataclass(frozen=True)
class Variant:
  """How the typer is fitted on a fold's lab cells and used on the held-out ones."""

  name: str
  l2: float | None = None  # None: the model's typer.l2
  field_weight: float | None = None  # None: the model's typer.field_weight
  with_training_cells: bool = True  # the WBC training cells too
  train_views: tuple[int, ...] = (PLAIN,)
  test_views: tuple[int, ...] = (PLAIN,)  # probabilities averaged over these
  per_lab_standardized: bool = False  # each source's features to its own mean and std


def _standardized(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
  return (x - reference.mean(0)) / (reference.std(0) + 1e-6)


def fold_predictions(data: dict, variant: Variant, held: np.ndarray) -> np.ndarray:
  """The held-out lab cells' predicted type indices, fitted on the others (and the WBC cells)."""
  lab_x, lab_y = data['lab_x'], data['lab_y']
  views = list(variant.train_views)
  fit_x = lab_x[~held][:, views].reshape(-1, lab_x.shape[-1])
  fit_y = np.repeat(lab_y[~held], len(views))
  field_weight = (
    float(data['field_weight']) if variant.field_weight is None else variant.field_weight
  )
  weight = np.full(len(fit_y), field_weight / len(views))
  lab_ref = fit_x
  wbc_x = data['train_x']
  if variant.per_lab_standardized:
    fit_x, wbc_x = _standardized(fit_x, lab_ref), _standardized(wbc_x, wbc_x)
  if variant.with_training_cells:
    fit_x = np.concatenate([wbc_x, fit_x])
    fit_y = np.concatenate([data['train_y'], fit_y])
    weight = np.concatenate([np.ones(len(data['train_y'])), weight])
  typer = cell_typing.fit_linear(
    fit_x,
    fit_y,
    tuple(data['cell_types']),
    weight,
    float(data['l2']) if variant.l2 is None else variant.l2,
  )
  probs = 0
  for v in variant.test_views:
    x = lab_x[held][:, v]
    probs = probs + typer.probabilities(
      _standardized(x, lab_ref) if variant.per_lab_standardized else x
    )
  return np.asarray(probs).argmax(1)


def type_right(data: dict, variant: Variant, typed, fold_seed: int, num_folds: int) -> float:
  """The share of lab cells typed right, each predicted with its fold held out (the fields
  dealt as `cross_lab.py finetune_cv` deals them)."""
  fold_of = {
    field.path.name: k
    for k, fold in enumerate(typed_fields.stratified_folds(typed, num_folds, fold_seed))
    for field in fold
  }
  folds = np.array([fold_of[g] for g in data['lab_groups']])
  predicted = np.zeros(len(data['lab_y']), int)
  for k in range(num_folds):
    held = folds == k
    predicted[held] = fold_predictions(data, variant, held)
  return float((predicted == data['lab_y']).mean())


ALL_VIEWS = tuple(range(len(SCALES) * len(TURNS)))
TURNS_AT_1 = tuple(range(PLAIN, PLAIN + len(TURNS)))
SCALES_PLAIN = tuple(i * len(TURNS) for i in range(len(SCALES)))
VARIANTS: tuple[Variant, ...] = (
  Variant('as configs/finetune_fields.py fits'),
  Variant('l2 0.003', l2=0.003),
  Variant('l2 0.03', l2=0.03),
  Variant('lab cells weigh 10 crops', field_weight=10.0),
  Variant('lab cells weigh 40 crops', field_weight=40.0),
  Variant("the lab's cells alone", with_training_cells=False),
  Variant('each source standardized to itself', per_lab_standardized=True),
  Variant('lab cells also mirrored, flipped, turned', train_views=TURNS_AT_1),
  Variant('... and averaged over them', train_views=TURNS_AT_1, test_views=TURNS_AT_1),
  Variant('lab cells also at 0.85x and 1.15x', train_views=SCALES_PLAIN),
  Variant('all 12 views, fitted and averaged', train_views=ALL_VIEWS, test_views=ALL_VIEWS),
)


def main(argv):
  del argv
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    if not (FLAGS.fields_dir and FLAGS.cache):
      raise app.UsageError('give --fields_dir and --cache')
    path = pathlib.Path(FLAGS.cache)
    if not path.is_file():
      build_cache(path)
    data = read_cache(path)
    typed = typed_fields.read_typed_fields(FLAGS.fields_dir)
    if sorted(f.path.name for f in typed) != sorted(set(data['lab_groups'])):
      raise errors.UserError(f'{path}: cached for other fields than {FLAGS.fields_dir}')
    check_fitting(path, data, fitting_config())
    seeds = [int(s) for s in FLAGS.fold_seeds]
    print(f'| variant | {" | ".join(f"fold seed {s}" for s in seeds)} | mean |')
    print('|---|' + '---:|' * (len(seeds) + 1))
    for variant in VARIANTS:
      scores = [type_right(data, variant, typed, s, FLAGS.folds) for s in seeds]
      cells_ = ' | '.join(f'{v:.3f}' for v in scores)
      print(f'| {variant.name} | {cells_} | {np.mean(scores):.3f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
