"""Evaluation: the jitted eval step, per-dataset evaluation, and metric summaries.

Training's periodic evaluation and `--mode=evaluate` share these functions, so a number in a
training log and one in an evaluation report mean the same thing. `evaluate_checkpoint` (the
`--mode=evaluate` entry point) restores a checkpoint, evaluates the test split of every configured
dataset (or every image of `config.eval.raw_dir`) and writes reports to `workdir/eval/<dataset>/`.
"""

import dataclasses
import json
import pathlib
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax import checkpointing
from wcsegnet_jax import config_lib
from wcsegnet_jax import input_pipeline
from wcsegnet_jax import losses
from wcsegnet_jax import metrics
from wcsegnet_jax import models
from wcsegnet_jax import reports
from wcsegnet_jax import shipped_model
from wcsegnet_jax.data import raw


def predict_probs(model, variables, images_uint8: jax.Array, data_config, tta: bool) -> jax.Array:
  """Softmax probabilities (B, H, W, C) float32; with `tta`, averaged over the four flips."""
  images = input_pipeline.normalize_images(images_uint8, data_config.mean, data_config.std)

  def probs(x):
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)

  if not tta:
    return probs(images)
  total = probs(images)
  for axes in ((2,), (1,), (1, 2)):   # left-right, up-down, both
    total = total + jnp.flip(probs(jnp.flip(images, axes)), axes)
  return total / 4.0


def make_eval_step(model, config: ml_collections.ConfigDict) -> Callable:
  """A pure eval step: (variables, batch) -> per-image confusion, loss, prediction."""
  loss_fn = losses.make_loss_fn(config.train)

  def eval_step(variables, batch):
    probs = predict_probs(model, variables, batch['image'], config.data, config.eval.tta)
    labels = batch['label_map'].astype(jnp.int32)
    preds = jnp.argmax(probs, axis=-1)
    logits = jnp.log(jnp.maximum(probs, 1e-12))   # the loss of the (possibly averaged) prediction
    return {'confusion': metrics.per_image_confusion(labels, preds),
            'loss': jax.vmap(lambda l, y: loss_fn(l[None], y[None]))(logits, labels),
            'prediction': preds.astype(jnp.uint8),
            'confidence': jnp.max(probs, axis=-1).mean(axis=(1, 2))}

  return eval_step


@dataclasses.dataclass
class EvalResult:
  """Everything measured on one dataset, one row per image."""
  name: str
  file_ids: np.ndarray          # (N,) str
  cell_types: np.ndarray        # (N,) true class id of each image's cell
  confusion: np.ndarray         # (N, C, C) int64 per-image pixel confusion
  loss: np.ndarray              # (N,)
  prediction: np.ndarray | None  # (N, H, W) uint8, when kept
  images: np.ndarray | None     # (N, H, W, 3) uint8, when kept
  label_maps: np.ndarray | None  # (N, H, W) uint8, when kept


def evaluate_source(eval_step: Callable, variables, source, name: str, batch_size: int,
                    to_device: Callable, keep_maps: bool = False) -> EvalResult:
  """Runs `eval_step` over a whole split; keeps predictions and inputs when asked.

  Test splits are small (tens to hundreds of images), so each process evaluates all of it on
  one of its own devices (`local_eval_device`): no cross-host gather, the same numbers
  everywhere, and only process 0 writes them.
  """
  rows = {k: [] for k in ('file_id', 'cell_type', 'confusion', 'loss', 'prediction', 'image',
                          'label_map')}
  for batch in input_pipeline.eval_batches(source, batch_size):
    valid = batch['valid']
    out = jax.device_get(eval_step(variables, to_device(
        {k: batch[k] for k in ('image', 'label_map')})))
    rows['file_id'].append(batch['file_id'][valid])
    rows['cell_type'].append(batch['cell_type'][valid])
    rows['confusion'].append(np.asarray(out['confusion'], np.int64)[valid])
    rows['loss'].append(np.asarray(out['loss'])[valid])
    if keep_maps:
      rows['prediction'].append(np.asarray(out['prediction'])[valid])
      rows['image'].append(batch['image'][valid])
      rows['label_map'].append(batch['label_map'][valid])
  cat = {k: np.concatenate(v) if v else None for k, v in rows.items()}
  return EvalResult(name, cat['file_id'], cat['cell_type'], cat['confusion'], cat['loss'],
                    cat['prediction'], cat['image'], cat['label_map'])


def local_eval_device() -> jax.Device:
  return jax.local_devices()[0]


def local_copy(tree, device: jax.Device):
  """A replicated (possibly multi-host) pytree as arrays on one local device."""
  return jax.tree.map(lambda x: jax.device_put(x.addressable_data(0), device), tree)


def predicted_cell_types(per_image_confusion: np.ndarray) -> np.ndarray:
  """Each image's voted cell type (0: no nucleus predicted), from its predicted pixels per
  class (the confusion matrix's column sums), as `metrics.predicted_cell_type` votes a map."""
  return metrics.voted_cell_type(np.asarray(per_image_confusion).sum(axis=1))


def summarize(result: EvalResult) -> dict:
  """Pooled and per-image metrics, per class and per cell, as plain JSON-able values."""
  pooled = result.confusion.sum(0)
  cell_cm = metrics.cell_confusion(result.cell_types, predicted_cell_types(result.confusion))
  return {
      'dataset': result.name,
      'n_images': int(len(result.file_ids)),
      'loss': float(result.loss.mean()) if len(result.loss) else None,
      'paper': metrics.paper_metrics(pooled),
      'per_class': metrics.class_metrics(pooled),
      'per_image': metrics.per_image_summary(result.confusion),
      'cells': metrics.cell_metrics(cell_cm),
  }


def scalar_summary(summary: dict, prefix: str) -> dict[str, float]:
  """The few numbers a training log shows for one dataset."""
  paper = summary['paper']
  out = {f'{prefix}loss': summary['loss']}
  out.update({f'{prefix}{k}': paper[k] for k in ('accuracy', 'dice', 'miou')})
  out[f'{prefix}cell_accuracy'] = summary['cells']['cell_accuracy']
  return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------------------------
# Restoring a checkpoint for evaluation or prediction.
# ------------------------------------------------------------------------------------------------

# Config keys that define what a restored model computes. Another value than training's either
# fails to restore (widths, depth) or, worse, silently computes something else (activation,
# padding, normalisation); both are reported up front, naming the keys.
# Every model key counts (a new one is protected without anyone listing it) except those that
# change only training (dropouts, BatchNorm momentum) or the arithmetic's precision (dtype).
# Evaluation checks the model and data sections against the checkpoint's config; within them,
# only these may differ (and any key added later is checked): training-only regularisation and
# numerics, where the data lives and which images are evaluated. The normalisation, image size
# and the split (another seed or fraction would evaluate on training images) must match.
EVAL_CHECKED = ('model', 'data')
EVAL_FREE = ('model.encoder_dropout', 'model.decoder_dropout', 'model.decoder_dropout_stages',
             'model.head_dropout', 'model.bn_momentum', 'model.dtype',
             'data.raw_dir', 'data.tfds_dir', 'data.folder_dir', 'data.datasets',
             'data.cell_types', 'data.dataset_repeats', 'data.mask_level_tolerance',
             'data.mask_max_off_level_fraction')


PRETRAINED = 'pretrained'   # --checkpoint value naming the model shipped in the package


def resolve_checkpoint(workdir: str | pathlib.Path,
                       checkpoint: str | int) -> tuple[pathlib.Path, str]:
  """(the workdir holding the checkpoints, 'best' | 'latest' | a step) from --checkpoint.

  `checkpoint` is 'best', 'latest', a step number (of `workdir`), or a path: a step folder
  `.../checkpoints/<step>`, a `.../checkpoints` folder, or another workdir (its latest step,
  as everywhere by default: 'best' was picked by test Dice, so its test figures are optimistic).
  """
  which = str(checkpoint).strip()
  if which in ('best', 'latest') or which.isdigit():
    return pathlib.Path(workdir).expanduser().resolve(), which
  path = pathlib.Path(which).expanduser().resolve()
  if path.is_dir() and path.name.isdigit() and path.parent.name == 'checkpoints':
    return path.parent.parent, path.name
  if path.is_dir() and path.name == 'checkpoints':
    return path.parent, 'latest'
  if (path / 'checkpoints').is_dir():
    return path, 'latest'
  raise checkpointing.CheckpointError(
      f'--checkpoint={checkpoint!r} is neither best, latest, a step number, nor a checkpoint '
      f'folder (WORKDIR/checkpoints/<step>) or a workdir holding checkpoints/')


def check_eval_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """The model and normalisation must be those the checkpoint was trained with."""
  saved = checkpointing.load_saved_config(workdir)
  if saved is None:
    return
  diffs = checkpointing.config_mismatches(saved, json.loads(config.to_json()), EVAL_FREE,
                                          within=EVAL_CHECKED)
  if diffs:
    raise checkpointing.CheckpointError(
        f'the checkpoint in {workdir} was trained with another config '
        f'({workdir / checkpointing.CONFIG_FILE}); ' + '; '.join(diffs) +
        '. Pass the config it was trained with.')


def load_variables(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                   checkpoint: str | int = 'latest', sharding=None) -> tuple[dict, int]:
  """Restores {'params', 'batch_stats'} of a training checkpoint; returns (variables, step).

  Only those two parts of the saved train state are read (the optimizer that trained it does
  not matter); their shapes must be those of `config`'s model. Arrays are placed with
  `sharding` (default: the first device).
  `checkpoint='pretrained'` takes the model shipped in the package (`shipped_model`).
  """
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if str(checkpoint).strip() == PRETRAINED:
    return _pretrained_variables(config, sharding)
  ckpt_workdir, which = resolve_checkpoint(workdir, checkpoint)
  directory = checkpointing.checkpoint_dir(ckpt_workdir)
  if not directory.is_dir():
    raise checkpointing.CheckpointError(
        f'no checkpoint in {ckpt_workdir}: {directory} does not exist. Train first '
        f'(--mode=train with this workdir), or pass --checkpoint=PATH')
  check_eval_config(ckpt_workdir, config)
  manager = checkpointing.make_manager(ckpt_workdir, read_only=True)
  try:
    step = checkpointing.select_step(manager, which)
  finally:
    manager.close()
  try:
    variables = checkpointing.restore_variables(directory, step, abstract_variables(config),
                                                sharding)
  except checkpointing.CheckpointError as e:
    if (ckpt_workdir / checkpointing.CONFIG_FILE).exists():
      raise
    raise checkpointing.CheckpointError(
        f'{e}. {ckpt_workdir} has no {checkpointing.CONFIG_FILE} to say how it was trained: '
        f'pass the --config it was trained with') from None
  logging.info('Restored step %d from %s.', step, directory)
  return variables, step


def _pretrained_variables(config: ml_collections.ConfigDict, sharding) -> tuple[dict, int]:
  """The shipped model's variables, if `config` computes what it was trained to compute."""
  shipped = shipped_model.load_config()
  diffs = checkpointing.config_mismatches(shipped.to_dict(), config.to_dict(), EVAL_FREE,
                                          within=EVAL_CHECKED)
  if diffs:
    raise checkpointing.CheckpointError(
        f'the pretrained model ({shipped_model.PRETRAINED_DIR}) was trained with another config: '
        + '; '.join(diffs) + '. Use --config=configs/pretrained.py (its own config).')
  variables = shipped_model.load_variables(shipped)
  step = int(shipped_model.load_info().get('step', 0))
  return jax.device_put(variables, sharding), step


def abstract_variables(config: ml_collections.ConfigDict) -> dict:
  """The shapes (no values) of the model's {'params', 'batch_stats'} at `config`."""
  model = models.create_model(config.model)
  size = config.data.image_size
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32), train=False))
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


# ------------------------------------------------------------------------------------------------
# Evaluating a folder of raw images (config.eval.raw_dir) without building TFDS.
# ------------------------------------------------------------------------------------------------

class RawExamples:
  """A random-access source over raw records: each item is read, checked and resized on access.

  Items carry the keys `input_pipeline.eval_batches` reads: image, label_map, cell_type,
  file_id.
  """

  def __init__(self, records: Sequence[raw.RawRecord], data_config: ml_collections.ConfigDict):
    self.records = list(records)
    self.data_config = data_config

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    d = self.data_config
    return raw.load_example(self.records[index], d.image_size, d.mask_level_tolerance,
                            d.mask_max_off_level_fraction)


def detect_raw_layout(raw_dir: pathlib.Path) -> str:
  """'wbc' (Dataset 1/, Dataset 2/) or 'folder' (images/, masks/); a clear error otherwise."""
  if any((raw_dir / sub).is_dir() for sub in raw.WBC_SUBSETS.values()):
    return 'wbc'
  if (raw_dir / 'images').is_dir() and (raw_dir / 'masks').is_dir():
    return 'folder'
  raise raw.DataError(
      f'{raw_dir} (config.eval.raw_dir) is in no known layout: expected '
      f'{" or ".join(repr(s + "/") for s in raw.WBC_SUBSETS.values())} with their class CSVs '
      f'(layout wbc), or images/ and masks/ (layout folder)')


def raw_eval_sources(config: ml_collections.ConfigDict) -> list[tuple[str, str | None, object]]:
  """[(report name, paper key, source)] for every subset of `config.eval.raw_dir`."""
  raw_dir = pathlib.Path(config.eval.raw_dir).expanduser().resolve()
  if not raw_dir.is_dir():
    raise raw.DataError(f'{raw_dir} (config.eval.raw_dir) is not a folder')
  layout = config.eval.raw_layout
  if layout == 'auto':
    layout = detect_raw_layout(raw_dir)
  if layout == 'folder':
    sources = [('folder', raw_dir.name, None)]
  else:
    sources = [(s, f'{raw_dir.name}-{s}', s) for s, sub in raw.WBC_SUBSETS.items()
               if (raw_dir / sub).is_dir()]
    if not sources:   # layout forced to 'wbc' on another folder: list_wbc_records explains
      sources = [(s, f'{raw_dir.name}-{s}', s) for s in raw.WBC_SUBSETS]
  out = []
  for source, name, paper_key in sources:
    records = raw.list_raw_records(source, raw_dir)
    records = raw.filter_cell_types(records, config.data.cell_types,
                                    where=f'{source} data in {raw_dir}')
    out.append((name, paper_key, RawExamples(records, config.data)))
  return out


def eval_sources(config: ml_collections.ConfigDict) -> list[tuple[str, str | None, object]]:
  """[(report name, paper key, source)]: raw_dir's images, else each dataset's test split."""
  if config.eval.raw_dir:
    return raw_eval_sources(config)
  out = []
  for d in input_pipeline.load_datasets(config.data):
    if d.test is None:
      logging.warning('%s has no test split (data.test_fraction=%s); not evaluated.', d.name,
                      config.data.test_fraction)
      continue
    paper_key = d.name if d.name in reports.PAPER_TABLE1 else None
    out.append((d.name, paper_key, d.test))
  if not out:
    raise raw.DataError(f'nothing to evaluate: no test split in {list(config.data.datasets)}')
  return out


# ------------------------------------------------------------------------------------------------
# --mode=evaluate
# ------------------------------------------------------------------------------------------------

def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        checkpoint: str | int | None = None) -> dict[str, dict]:
  """Evaluates a checkpoint on every test set; reports go to `workdir/eval/<dataset>/`
  (`<dataset>-tta/` with test-time augmentation, so both can be compared).

  `checkpoint`: 'best' | 'latest' | a step | a path (see `resolve_checkpoint`); None takes
  `config.eval.checkpoint`. Returns {dataset name: the dict written to its metrics.json}.
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  workdir = pathlib.Path(workdir).expanduser().resolve()
  device = local_eval_device()
  # The checkpoint first: a missing one is reported before any data is prepared.
  checkpoint = str(checkpoint or config.eval.checkpoint).strip()
  variables, step = load_variables(config, workdir, checkpoint,
                                   sharding=jax.sharding.SingleDeviceSharding(device))
  sources = eval_sources(config)
  model = models.create_model(config.model)
  eval_step = jax.jit(make_eval_step(model, config))

  meta = {'config_name': config.name, 'checkpoint_step': int(step),
          'checkpoint_dir': (str(shipped_model.PRETRAINED_DIR) if checkpoint == PRETRAINED else
                             str(checkpointing.checkpoint_dir(
                                 resolve_checkpoint(workdir, checkpoint)[0]))),
          'tta': bool(config.eval.tta), 'image_size': int(config.data.image_size)}
  written = {}
  for name, paper_key, source in sources:
    result = evaluate_source(eval_step, variables, source, name, config.eval.batch_size,
                             lambda b: jax.device_put(b, device), keep_maps=True)
    summary = summarize(result)
    if jax.process_index() == 0:
      out_dir = workdir / 'eval' / (f'{name}-tta' if config.eval.tta else name)
      written[name] = reports.write_dataset_reports(
          out_dir, result, summary, predicted_cell_types(result.confusion), meta, paper_key,
          config.eval.figure_rows, config.eval.worst_k)
      logging.info('Wrote %s.', out_dir)
  if jax.process_index() == 0:
    print(f'\nCheckpoint step {step}, config {config.name}, TTA '
          f'{"on" if config.eval.tta else "off"}; reports in {workdir / "eval"}')
    print(reports.summary_table(written))
  return written
