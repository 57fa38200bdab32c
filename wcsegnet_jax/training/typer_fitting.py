"""Fitting a cell typer (`cell_typing`) on a run's training cells and a lab's typed fields.

The training crops (one cell each, the run's train split) are seen in `typer.views` augmented
views (the run's own augmentation: another stain, optics, zoom); a lab's typed cells
(`data.fields_dir`: fields/ + truth.csv) are cut from their fields at the estimated scale around
the model's cell in each true box (the box's centre where the model found none) and weigh
`typer.field_weight` training crops each, so a hundred of them steer the classifier to the
lab's stain. The temperature that calibrates its probabilities is chosen on held-out folds of
the same cells (out-of-fold logits, whole images or fields per fold), never on a test split.
"""

import dataclasses
import hashlib
import json
import pathlib
from typing import Sequence

from absl import logging
import ml_collections
import numpy as np

from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.data import augment
from wcsegnet_jax.data import color
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.evaluation import field_scoring
from wcsegnet_jax.inference import fields
from wcsegnet_jax.inference import scale_estimate
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import metrics
from wcsegnet_jax.model import restore
from wcsegnet_jax.training import field_crops as field_crops_lib

FOLDS = 5
# Below this many typed cells of a lab, its two figures are rough: on bccd_fields fitting typed
# held-out fields worse than the shipped typer with 10 and 27 typed cells, better with 108.
FEW_LAB_CELLS = 100
TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 61))


@dataclasses.dataclass
class TypedCrops:
  """Cell crops at the training scale (after the colour step), their type index into the
  model's cell types, the image or field each came from, and its weight in the fit."""

  crops: np.ndarray
  labels: np.ndarray
  groups: np.ndarray
  weights: np.ndarray

  @staticmethod
  def join(parts: Sequence['TypedCrops']) -> 'TypedCrops':
    parts = [p for p in parts if len(p.labels)]
    return TypedCrops(
      *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(TypedCrops))
    )


def dataset_crops(
  datasets, split: str, config: ml_collections.ConfigDict, views: int, seed: int
) -> TypedCrops:
  """The `split` examples of the run's datasets (`input_pipeline.load_datasets`), each in
  `views` views: as stored, then augmented by `config.augment`."""
  table = classes.table_of(config.data)
  rng = np.random.default_rng(seed)
  crops, labels, groups = [], [], []
  for dataset in datasets:
    source = getattr(dataset, split)
    for i in range(0 if source is None else len(source)):
      example = source[i]
      label = list(table.nucleus_ids).index(int(example['cell_type']))
      for view in range(views):
        image = (
          example['image']
          if view == 0
          else augment.augment_example(example, rng, config.augment)['image']
        )
        # Stored after the colour step on the whole image, which is one cell's crop: with
        # typer.crop_color 'crop' a view's colours are standardized again, on their own.
        crops.append(
          image if config.typer.crop_color == 'field' else color.standardize(image, config.data)
        )
        labels.append(label)
        groups.append(f'{dataset.name}/{i}')
  return _typed_crops(crops, labels, groups, 1.0, int(config.data.image_size))


def turned_views(crop: np.ndarray, views: int) -> list[np.ndarray]:
  """The first `views` of: the crop as cut, mirrored, flipped and turned a quarter; a stain's
  cells look the same every way up, so each is another typed example of the lab's cell."""
  return [crop, crop[:, ::-1], crop[::-1], np.rot90(crop)][:views]


def field_crops(
  segment: segmenter.Segmenter,
  typed: Sequence[typed_fields.TypedField],
  weight: float,
  views: int = 1,
  on_cut=None,
) -> TypedCrops:
  """A crop around each typed cell of a lab's fields, at the field's estimated scale, in
  `views` views (`turned_views`) that share the cell's `weight`. `on_cut(image, centres,
  labels)`, if given, sees each field at that scale, where its cells are cut and their types."""
  config = segment.config
  table = classes.table_of(config.data)
  plain = segment.without_tta()
  crops, labels, groups = [], [], []
  for field in typed:
    image = image_files.read_rgb(field.path)
    scale, matches = found_at_scale(plain, field, image)
    centres = [cut_centre(truth, match, scale) for truth, match in zip(field.cells, matches)]
    image = fields.resize_field(image, scale)
    types = [list(table.cell_types).index(truth.cell_type) for truth in field.cells]
    if on_cut is not None:
      on_cut(image, centres, types)
    cut = cell_typing.cell_crops(image, centres, segment.size, config.data, config.typer.crop_color)
    for crop, label in zip(cut, types):
      crops += turned_views(crop, views)
      labels += [label] * views
    groups += [field.path.name] * (len(field.cells) * views)
  return _typed_crops(crops, labels, groups, weight / views, segment.size)


def found_at_scale(
  plain: segmenter.Segmenter, field: typed_fields.TypedField, image: np.ndarray
) -> tuple[float, list[cells.Cell | None]]:
  """(the field's estimated scale, per typed cell the model's cell matching it or None)."""
  config = plain.config
  scale = scale_estimate.estimate_scale(plain, image, config.eval.decode) or 1.0
  found = field_scoring.cells_at_field_scale(
    plain.field(image, scale),
    classes.table_of(config.data),
    cells.CellRules(),
    config.eval.decode,
    scale,
  )
  return scale, field_scoring.matched_cells(field, found)


def _typed_crops(crops, labels, groups, weight: float, size: int) -> TypedCrops:
  return TypedCrops(
    np.asarray(crops, np.uint8).reshape(-1, size, size, 3),
    np.asarray(labels, np.int32),
    np.asarray(groups, str),
    np.full(len(labels), float(weight)),
  )


def cut_centre(
  truth: typed_fields.TypedCell, match: cells.Cell | None, scale: float
) -> tuple[float, float]:
  """Where to cut a typed cell's crop, at `scale`: the centre of the model's cell that matches
  it (`field_scoring.matched_cells`), else the centre of its box."""
  if match is not None:
    return match.centre[0] * scale, match.centre[1] * scale
  x0, y0, x1, y1 = truth.box
  return (x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale


def _folds_of(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
  names = np.unique(groups)
  np.random.default_rng(seed).shuffle(names)
  fold_of = {name: i % k for i, name in enumerate(names)}
  return np.array([fold_of[g] for g in groups])


def out_of_fold_logits(
  features: np.ndarray, data: TypedCrops, cell_types: Sequence[str], l2: float, seed: int = 0
) -> np.ndarray:
  """Each cell's logits from a typer fitted without its image or field (FOLDS folds)."""
  folds = _folds_of(data.groups, FOLDS, seed)
  logits = np.zeros((len(data.labels), len(cell_types)), np.float32)
  for k in range(FOLDS):
    held = folds == k
    typer = cell_typing.fit_linear(
      features[~held], data.labels[~held], cell_types, data.weights[~held], l2
    )
    logits[held] = typer.logits(features[held])
  return logits


def best_temperature(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
  """The temperature minimising the weighted negative log-likelihood (a grid, 0.25-8)."""

  def nll(t):
    z = logits / t
    z = z - z.max(1, keepdims=True)
    log_p = z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))
    return -(weights * log_p).sum() / weights.sum()

  return float(min(TEMPERATURES, key=nll))


def fit(
  config: ml_collections.ConfigDict, variables: dict, datasets, fields_dir: str | None = None
) -> cell_typing.LinearTyper:
  """A calibrated typer for the model (config + variables) from its datasets' training cells
  and, with `fields_dir`, a lab's typed fields; its test-split accuracy in `info`."""
  t = config.typer
  table = classes.table_of(config.data)
  features = cell_typing.CellFeatures(config, variables, levels=cell_typing.levels_of(config))
  parts = [dataset_crops(datasets, 'train', config, t.views, config.seed)]
  before = _typer_before(config, variables) if fields_dir else None
  right_before = []  # per lab cell: typed right by `before`
  if fields_dir:
    typed = typed_fields.read_typed_fields(fields_dir, cell_types=table.cell_types)
    parts.append(
      field_crops(
        segmenter.Segmenter(config, variables, tta=False),
        typed,
        t.field_weight,
        t.field_views,
        on_cut=None if before is None else _scorer(before, right_before),
      )
    )
  data = TypedCrops.join(parts)
  logging.info('Cell typer: features of %d cell crops.', len(data.labels))
  x, found = features(data.crops)
  logits = out_of_fold_logits(x, data, table.cell_types, t.l2)
  temperature = best_temperature(logits, data.labels, data.weights)
  typer = cell_typing.fit_linear(x, data.labels, table.cell_types, data.weights, t.l2)
  typer.temperature = temperature
  typer.info = {
    'levels': list(features.levels),
    'cells': int(len(np.unique(data.groups))),
    'lab_fields': fields_dir or '',
    'l2': t.l2,
    'views': t.views,
    'field_views': t.field_views if fields_dir else 0,
    'uncertain_below': t.uncertain_below,
    'crop_color': t.crop_color,
    'test': _test_scores(typer, features, datasets, config),
  }
  if fields_dir:
    typer.info['lab_fields_digest'] = lab_fields_digest(typed)
  lab = len(parts[-1].labels) if fields_dir else 0
  if lab:  # the lab's cells are the last rows
    typer.info['lab_cross_validated'] = lab_type_right(
      logits[-lab:], parts[-1].labels, t.field_views, found[-lab:]
    )
  if right_before:
    typer.info['lab_before'] = {
      'cells': len(right_before),
      'accuracy': float(np.mean(right_before)),
    }
  return typer


def _typer_before(config: ml_collections.ConfigDict, variables: dict):
  """The typer of the model a typer-only fit starts from (train.init_from, the network kept:
  train.num_epochs 0), where it was fitted on no lab's cells: it types the lab's cells
  untrained on them. Else None (a figure for the log only: a typer it cannot read is skipped)."""
  source = str(config.train.init_from).strip()
  if not source or config.train.num_epochs:
    return None
  folder = restore.pretrained_dir(source) or pathlib.Path(source).expanduser()
  try:
    before = cell_typing.load_typer(folder, config, variables)
  except (OSError, KeyError, ValueError) as e:  # a hand-copied or mismatched typer file
    logging.warning('%s: its cell typer is not scored on the lab (%s)', folder, e)
    return None
  return None if before is None or before.linear.info.get('lab_fields') else before


def _scorer(typer: cell_typing.CellTyper, right: list):
  """An `on_cut` that appends to `right` whether `typer` types each cell right (a cell whose
  crop shows no cell counts as wrong, as in `lab_type_right`)."""

  def score(image, centres, labels):
    probs = typer.probabilities(image, centres)
    right.extend(
      bool(np.isfinite(p).all() and int(p.argmax()) == label) for p, label in zip(probs, labels)
    )

  return score


def lab_type_right(
  logits: np.ndarray, labels: np.ndarray, views: int, found: np.ndarray | None = None
) -> dict:
  """How many of a lab's typed cells a typer fitted without their field types right (the
  out-of-fold logits of each cell's first view, as cut; a crop showing no cell, where `found`
  is False, counts as wrong): what fitting on the lab's cells promises, to weigh against the
  starting model's typer (`lab_before`)."""
  right = logits[::views].argmax(1) == labels[::views]
  if found is not None:
    right &= np.asarray(found, bool)[::views]
  return {'cells': int(len(right)), 'accuracy': float(right.mean()) if len(right) else 0.0}


def _test_scores(typer, features, datasets, config) -> dict:
  """Per dataset: the typer's accuracy on its test split's cells (one view each) and the
  calibration of its confidences (`metrics.calibration`)."""
  out = {}
  for dataset in datasets:
    test = dataset_crops([dataset], 'test', config, 1, 0)
    if len(test.labels):
      probs = typer.probabilities(features(test.crops)[0])
      right = probs.argmax(1) == test.labels
      out[dataset.name] = {
        'accuracy': float(right.mean()),
        'calibration': metrics.calibration(
          probs.max(1), right, uncertain_below=config.typer.uncertain_below
        ),
      }
  return out


def accuracy_text(typer: cell_typing.LinearTyper) -> str:
  return ', '.join(f'{name} {v["accuracy"]:.3f}' for name, v in typer.info['test'].items())


def fit_into(
  workdir: str | pathlib.Path, config: ml_collections.ConfigDict, variables: dict, datasets
) -> cell_typing.LinearTyper:
  """Fits the typer (`fit`, with the run's `data.fields_dir`) and saves it in `workdir`."""
  typer = fit(config, variables, datasets, config.data.fields_dir or None)
  _log_if_replacing(workdir, typer)
  typer.save(workdir)
  logging.info(
    'Cell typer saved in %s (test accuracy %s, temperature %.2f).',
    workdir,
    accuracy_text(typer),
    typer.temperature,
  )
  log_lab_scores(typer.info, str(config.train.init_from))
  return typer


def lab_fields_digest(typed: Sequence[typed_fields.TypedField]) -> str:
  """A digest of what a fit read of a lab's folder (`field_crops_lib.fields_key`: its fields, and
  their cells' types and boxes): an edited truth.csv or a changed field gives another."""
  return hashlib.sha256(json.dumps(field_crops_lib.fields_key(typed)).encode()).hexdigest()[:16]


def _fitted_on(info: dict) -> str:
  lab = info.get('lab_cross_validated')
  if not lab:
    return 'the training cells alone'
  return f'{lab["cells"]} typed cells of {info.get("lab_fields")}'


def _log_if_replacing(workdir, typer: cell_typing.LinearTyper) -> None:
  """Says so where the workdir's typer was fitted on other cells (an edited truth.csv)."""
  try:
    earlier = cell_typing.LinearTyper.load(workdir)
    if earlier is None:
      return
    before, digest = _fitted_on(earlier.info), earlier.info.get('lab_fields_digest')
  except Exception:  # pylint: disable=broad-except  # unreadable: replaced by a readable one
    return
  now = _fitted_on(typer.info)
  if before != now or digest != typer.info.get('lab_fields_digest'):
    logging.info(
      'The cell typer in %s, fitted on %s, is replaced by one fitted on %s%s.',
      workdir,
      before,
      now,
      " (the lab's fields or truth.csv changed)" if before == now else '',
    )


def lab_estimates(info: dict) -> dict:
  """A fitted typer's two figures on the lab's cells (its info's `lab_cross_validated` and
  `lab_before`) as 'cross_validated' and 'before' accuracies, and 'warned': fitting did worse
  than the starting model's typer. {} where the typer was not fitted on a lab's cells."""
  lab, before = info.get('lab_cross_validated'), info.get('lab_before')
  if not lab:
    return {}
  out = {'cells': lab['cells'], 'cross_validated': lab['accuracy']}
  if before:
    out.update(before=before['accuracy'], warned=lab['accuracy'] < before['accuracy'])
  return out


def log_lab_scores(info: dict, init_from: str) -> None:
  """The fit's two figures on the lab's cells (`lab_estimates`), and a warning, with the
  predict flag that keeps the starting model, where fitting did worse."""
  estimates = lab_estimates(info)
  if not estimates:
    return
  logging.info(
    "The lab's typed cells, each typed by a typer fitted without its field: %.3f right of %d%s",
    estimates['cross_validated'],
    estimates['cells'],
    f"; by the starting model's typer, untrained on them: {estimates['before']:.3f}."
    if 'before' in estimates
    else '.',
  )
  if estimates['cells'] < FEW_LAB_CELLS:
    logging.warning(
      'Only %d typed cells of the lab: one cell is %.1f%% of the figures above, so they are '
      'rough; fitting has paid with about a hundred (docs/results.md, "Fine-tuning on a '
      'lab\'s typed cells").',
      estimates['cells'],
      100.0 / max(estimates['cells'], 1),
    )
  if estimates.get('warned'):
    logging.warning(
      "Fitting on the lab's cells typed them worse than the starting model's typer (%.3f "
      'against %.3f); more typed cells may help. Until then keep the starting model: %s',
      estimates['cross_validated'],
      estimates['before'],
      _predicting_with(init_from.strip()),
    )


def _predicting_with(source: str) -> str:
  """The predict command line that uses the model `train.init_from` names."""
  if source == restore.PRETRAINED:
    return 'predict without --workdir'
  if restore.pretrained_dir(source) is not None:
    return f'predict --model={source.partition(":")[2]}'
  return f'predict --workdir={source}'
