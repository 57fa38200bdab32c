"""Evaluation: the jitted eval step, per-dataset evaluation, and metric summaries.

Training's periodic evaluation and `--mode=evaluate` share these functions, so a number in a
training log and one in an evaluation report mean the same thing.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax import classes
from wcsegnet_jax import input_pipeline
from wcsegnet_jax import losses
from wcsegnet_jax import metrics


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
  """Runs `eval_step` over a whole split; keeps predictions and inputs when asked."""
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


def predicted_cell_types(per_image_confusion: np.ndarray) -> np.ndarray:
  """Each image's cell type: the majority class of its predicted nucleus pixels (0: none)."""
  votes = per_image_confusion.sum(axis=1)[:, 1:]     # predicted pixels per nucleus class
  return np.where(votes.sum(-1) > 0, votes.argmax(-1) + 1, classes.BACKGROUND)


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
