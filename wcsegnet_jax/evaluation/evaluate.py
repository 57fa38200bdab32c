"""Evaluation: the jitted eval step, per-dataset evaluation, and metric summaries.

Training's periodic evaluation and `--mode=evaluate` share these functions, so a number in a
training log and one in an evaluation report mean the same thing. `evaluate_checkpoint` (the
`--mode=evaluate` entry point) restores a checkpoint (`restore`), evaluates the test split of every
configured
dataset (or every image of `config.eval.raw_dir`) and writes reports to `workdir/eval/<dataset>/`.
"""

import dataclasses
import itertools
import pathlib
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import held_out
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.evaluation import reports
from wcsegnet_jax.model import central_cell
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.model import decoding
from wcsegnet_jax.model import losses
from wcsegnet_jax.model import metrics
from wcsegnet_jax.model import models
from wcsegnet_jax.model import probabilities
from wcsegnet_jax.model import restore


def make_eval_step(model, config: ml_collections.ConfigDict) -> Callable:
  """A pure eval step: (variables, batch) -> per-image confusion, loss, prediction.

  All three stay on the device; callers fetch the small ones (confusion, loss) and the maps
  only when they keep them (`evaluate_split`)."""
  loss_fn = losses.make_loss_fn(config.train)
  table = classes.table_of(config.data)

  def eval_step(variables, batch):
    probs = probabilities.predict_probs(
      model, variables, batch['image'], config.data, config.eval.tta, config.eval.tta_rotations
    )
    labels = batch['label_map'].astype(jnp.int32)
    preds = decoding.decode(probs, table, config.eval.decode)
    if config.eval.central_cell_radius:
      preds = central_cell.central_cell(preds, int(config.eval.central_cell_radius))
    logits = jnp.log(jnp.maximum(probs, 1e-12))  # the loss of the (possibly averaged) prediction
    return {
      'confusion': metrics.per_image_confusion(labels, preds, probs.shape[-1]),
      'loss': jax.vmap(lambda l, y: loss_fn(l[None], y[None]))(logits, labels),
      'prediction': preds.astype(jnp.uint8),
    }

  return eval_step


@dataclasses.dataclass
class EvalResult:
  """Everything measured on one dataset, one row per image."""

  name: str
  file_ids: np.ndarray  # (N,) str
  cell_types: np.ndarray  # (N,) true class id of each image's cell
  confusion: np.ndarray  # (N, C, C) int64 per-image pixel confusion
  loss: np.ndarray  # (N,)
  prediction: np.ndarray | None  # (N, H, W) uint8, when kept
  images: np.ndarray | None  # (N, H, W, 3) uint8, when kept
  label_maps: np.ndarray | None  # (N, H, W) uint8, when kept


@dataclasses.dataclass
class DeviceSplit:
  """A split in eval batches on one device: uploaded once, evaluated as often as asked (each
  epoch of a training run) without another host->device copy."""

  name: str
  batches: list[dict]  # {'image', 'label_map'} device arrays, `batch_size` rows each
  valid: np.ndarray  # (rows,) bool: False for the padding of the last batch
  file_ids: np.ndarray  # (N,) str
  cell_types: np.ndarray  # (N,)
  images: np.ndarray | None  # (N, H, W, 3) uint8 on the host, kept for reports
  label_maps: np.ndarray | None  # (N, H, W) uint8 on the host, kept for reports


def upload_split(
  source, name: str, batch_size: int, to_device: Callable, keep_maps: bool = False
) -> DeviceSplit:
  """The whole of `source` on the device in eval batches; its inputs kept on the host too
  when `keep_maps` (reports draw them).

  Test splits are small (tens to hundreds of images, 58 KB each at 120x120), so holding them
  on the device for a whole run costs little and saves a copy per evaluation.
  """
  return _upload_batches(
    input_pipeline.eval_batches(source, batch_size), name, to_device, keep_maps
  )


def _upload_batches(eval_batches, name: str, to_device: Callable, keep_maps: bool) -> DeviceSplit:
  batches, host = [], {k: [] for k in ('valid', 'file_id', 'cell_type', 'image', 'label_map')}
  for batch in eval_batches:
    batches.append(to_device({k: batch[k] for k in ('image', 'label_map')}))
    valid = batch['valid']
    host['valid'].append(valid)
    for k in ('file_id', 'cell_type') + (('image', 'label_map') if keep_maps else ()):
      host[k].append(batch[k][valid])
  cat = {k: np.concatenate(v) if v else None for k, v in host.items()}
  return DeviceSplit(
    name, batches, cat['valid'], cat['file_id'], cat['cell_type'], cat['image'], cat['label_map']
  )


def evaluate_split(eval_step: Callable, variables, split: DeviceSplit) -> EvalResult:
  """Runs `eval_step` over an uploaded split; its predictions are fetched only when the split
  keeps its maps.

  Every batch is dispatched before anything is fetched, so the device runs them back to back,
  and then one fetch brings the per-image confusion matrices and losses (N x C x C + N
  numbers) home. Test splits are small, so each process evaluates all of it on one of its own
  devices (`local_eval_device`): no cross-host gather, the same numbers everywhere, and only
  process 0 writes them.
  """
  keep_maps = split.images is not None
  keys = ('confusion', 'loss') + (('prediction',) if keep_maps else ())
  outputs = [eval_step(variables, batch) for batch in split.batches]
  fetched = jax.device_get([{k: out[k] for k in keys} for out in outputs])
  rows = {
    k: np.concatenate([f[k] for f in fetched])[split.valid] if fetched else None for k in keys
  }
  confusion = None if rows['confusion'] is None else rows['confusion'].astype(np.int64)
  return EvalResult(
    split.name,
    split.file_ids,
    split.cell_types,
    confusion,
    rows['loss'],
    rows.get('prediction'),
    split.images,
    split.label_maps,
  )


# A source evaluated once goes to the device this many batches at a time, so a large folder
# (eval.raw_dir) never has to fit in device memory whole.
SOURCE_CHUNK_BATCHES = 16


def evaluate_source(
  eval_step: Callable,
  variables,
  source,
  name: str,
  batch_size: int,
  to_device: Callable,
  keep_maps: bool = False,
) -> EvalResult:
  """Runs `eval_step` over a whole split once, `SOURCE_CHUNK_BATCHES` batches at a time
  (`evaluate_split` on each); keeps predictions and inputs when asked."""
  batches, parts = iter(input_pipeline.eval_batches(source, batch_size)), []
  while chunk := list(itertools.islice(batches, SOURCE_CHUNK_BATCHES)):
    parts.append(
      evaluate_split(eval_step, variables, _upload_batches(chunk, name, to_device, keep_maps))
    )
  if not parts:  # an empty source: the (empty) result of no batches
    return evaluate_split(eval_step, variables, _upload_batches([], name, to_device, keep_maps))
  join = lambda field: (
    None if getattr(parts[0], field) is None else np.concatenate([getattr(p, field) for p in parts])
  )
  return EvalResult(name, *(join(f.name) for f in dataclasses.fields(EvalResult)[1:]))


def local_eval_device() -> jax.Device:
  return jax.local_devices()[0]


def local_copy(tree, device: jax.Device):
  """A replicated (possibly multi-host) pytree as arrays on one local device."""
  return jax.tree.map(lambda x: jax.device_put(x.addressable_data(0), device), tree)


def predicted_cell_types(per_image_confusion: np.ndarray, table: classes.ClassTable) -> np.ndarray:
  """Each image's voted cell type (0: no nucleus predicted), from its predicted pixels per
  class (the confusion matrix's column sums), as `metrics.predicted_cell_type` votes a map."""
  return metrics.voted_cell_type(np.asarray(per_image_confusion).sum(axis=1), table)


def summarize(result: EvalResult, table: classes.ClassTable) -> dict:
  """Pooled and per-image metrics, per class and per cell, as plain JSON-able values, with the
  class names they were computed for."""
  pooled = result.confusion.sum(0)
  cell_cm = metrics.cell_confusion(
    result.cell_types, predicted_cell_types(result.confusion, table), table
  )
  return {
    'dataset': result.name,
    'n_images': int(len(result.file_ids)),
    'loss': float(result.loss.mean()) if len(result.loss) else None,
    'classes': list(table.names),
    'paper': metrics.paper_metrics(pooled, table),
    'per_class': metrics.class_metrics(pooled, table),
    'per_image': metrics.per_image_summary(result.confusion, table=table),
    'cells': metrics.cell_metrics(cell_cm, table),
  }


def scalar_summary(summary: dict, prefix: str) -> dict[str, float]:
  """The few numbers a training log shows for one dataset."""
  paper = summary['paper']
  out = {f'{prefix}loss': summary['loss']}
  # cell_dice (whole cells) only where the classes have a cytoplasm.
  out.update({f'{prefix}{k}': paper.get(k) for k in ('accuracy', 'dice', 'miou', 'cell_dice')})
  out[f'{prefix}cell_accuracy'] = summary['cells']['cell_accuracy']
  return {k: v for k, v in out.items() if v is not None}


def eval_sources(
  config: ml_collections.ConfigDict, trained=None
) -> list[tuple[str, str | None, object]]:
  """[(report name, paper key, source)]: raw_dir's images (those the model trained on apart:
  `trained` is restore.training_ids), else each dataset's test split."""
  if config.eval.raw_dir:
    return held_out.raw_eval_sources(config, trained)
  out = []
  for d in input_pipeline.load_datasets(config.data):
    if d.test is None:
      logging.warning(
        '%s has no test split (data.test_fraction=%s); not evaluated.',
        d.name,
        config.data.test_fraction,
      )
      continue
    paper_key = d.name if d.name in reports.PAPER_TABLE1 else None
    out.append((d.name, paper_key, d.test))
  if not out:
    raise errors.DataError(f'nothing to evaluate: no test split in {list(config.data.datasets)}')
  return out


# ------------------------------------------------------------------------------------------------
# --mode=evaluate
# ------------------------------------------------------------------------------------------------


def report_folder(name: str, config: ml_collections.ConfigDict, keeps_average: bool) -> str:
  """`<dataset>`, then `-tta` with test-time flips (`-tta-rot` with rotations too), `-raw` for a
  run's parameters where it also kept their average, `-<rule>` for a decoding other than the
  paper's argmax, `-central<r>` keeping the central cell only: each way of evaluating keeps its
  own reports."""
  raw = keeps_average and not config.eval.ema
  tta = ('-tta' + ('-rot' if config.eval.tta_rotations else '')) if config.eval.tta else ''
  return (
    name
    + tta
    + ('-raw' if raw else '')
    + ('' if config.eval.decode == 'argmax' else f'-{config.eval.decode}')
    + (f'-central{r}' if (r := config.eval.central_cell_radius) else '')
  )


def with_workdir_data(
  config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> ml_collections.ConfigDict:
  """`config` with the data paths the workdir's training recorded in its config.json, where
  neither the config nor the environment gives them: no $WCSEG_DATA_DIR needed again."""
  saved = run_files.load_saved_config(workdir)
  if not saved or 'data' not in saved:
    return config
  out = ml_collections.ConfigDict(config.to_dict())
  out.data = tfds_builder.with_recorded_paths(config.data, saved['data'])
  return out


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str, checkpoint: str | int | None = None
) -> dict[str, dict]:
  """Evaluates a checkpoint on every test set; reports go to `workdir/eval/<dataset>/`
  (`<dataset>-tta/` with test-time augmentation, and so on: `report_folder`).

  `checkpoint`: 'best' | 'latest' | a step | a path (see `restore.resolve_checkpoint`); None takes
  `config.eval.checkpoint`. Returns {dataset name: the dict written to its metrics.json}.
  """
  config_checks.validate(config, jax.device_count(), jax.process_count())
  workdir = pathlib.Path(workdir).expanduser().resolve()
  config = with_workdir_data(config, workdir)
  device = local_eval_device()
  # The checkpoint first: a missing one is reported before any data is prepared.
  checkpoint = str(checkpoint or config.eval.checkpoint).strip()
  variables, step = restore.load_variables(
    config, workdir, checkpoint, sharding=jax.sharding.SingleDeviceSharding(device)
  )
  keeps_average = restore.keeps_average(workdir, checkpoint)
  trained = restore.training_ids(workdir, checkpoint) if config.eval.raw_dir else None
  sources = eval_sources(config, trained)
  table = classes.table_of(config.data)
  model = models.model_for(config)
  eval_step = jax.jit(make_eval_step(model, config))

  meta = {
    'config_name': config.name,
    'checkpoint_step': int(step),
    'checkpoint_dir': str(
      restore.pretrained_dir(checkpoint)
      or checkpoints.checkpoint_dir(restore.resolve_checkpoint(workdir, checkpoint)[0])
    ),
    'tta': bool(config.eval.tta),
    'ema': restore.reads_average(config, workdir, checkpoint),
    'decode': config.eval.decode,
    'central_cell_radius': int(config.eval.central_cell_radius),
    'image_size': int(config.data.image_size),
  }
  written, folders = {}, []
  for name, paper_key, source in sources:
    result = evaluate_source(
      eval_step,
      variables,
      source,
      name,
      config.eval.batch_size,
      lambda b: jax.device_put(b, device),
      keep_maps=True,
    )
    summary = summarize(result, table)
    if jax.process_index() == 0:
      out_dir = workdir / 'eval' / report_folder(name, config, keeps_average)
      written[name] = reports.write_dataset_reports(
        out_dir,
        result,
        summary,
        predicted_cell_types(result.confusion, table),
        meta,
        paper_key,
        config.eval.figure_rows,
        config.eval.worst_k,
      )
      folders.append(str(out_dir.relative_to(workdir / 'eval')))
  if jax.process_index() == 0:
    print(
      f'\nCheckpoint step {step}, config {config.name}, TTA '
      f'{"on" if config.eval.tta else "off"}; reports in {workdir / "eval"}/: ' + ', '.join(folders)
    )
    print(reports.summary_table(written))
  return written
