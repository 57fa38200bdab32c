"""Segmentation and cell-type metrics: the one place they are defined.

Training (inside `jax.jit`), evaluation, tools and tests all use these functions.

Where the definitions come from:
- The paper (WCSegNet, Nasser et al. 2025, Table 1) reports pixel accuracy, precision, recall,
  Dice and mIoU of the *nucleus* against the background. The paper does not say how mIoU is
  averaged; its mIoU lies between the nucleus IoU and 1, which fits the mean of the background
  IoU and the nucleus IoU, so that is what `paper_metrics` computes: the confusion matrix is
  collapsed to nucleus (any cell type's class) vs the rest (background, and the cytoplasm when
  it is a class). With a cytoplasm class, `paper_metrics` adds the whole cell's Dice and IoU
  (nucleus or cytoplasm vs background) beside them.
- Host functions take the run's `classes.ClassTable` (default: the paper's four classes) and
  check that the matrices have its size.
- The per-class metrics (`class_metrics`) are the usual multi-class precision / recall / Dice /
  IoU of each class against all others, read off the confusion matrix.
- The per-cell type (`voted_cell_type`) is our reading of "the network classifies the cell":
  a majority vote of the predicted nucleus pixels.

Conventions, used everywhere below:
- A confusion matrix `cm` has rows = true class, columns = predicted class.
- Label values outside [0, num_classes) (e.g. an "ignore" value such as 255 or -1) are not
  counted, in the confusion matrices here and in `losses.soft_dice_loss` alike.
- Device functions count in int32 (exact up to 2**31 pixels; float32 sums would be exact only up
  to 2**24). Accumulate the matrices of many batches on the host in int64.
- Host functions return plain Python floats / ints / None in dicts (JSON-serialisable). A metric
  whose value is 0/0 because the class appears in neither labels nor predictions is undefined:
  it is reported as None and never enters a mean, so no NaN leaks into a summary.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core.classes import BACKGROUND
from wcsegnet_jax.core.classes import NUM_CLASSES

PAPER = classes.PAPER_TABLE

PAPER_METRICS = ('accuracy', 'precision', 'recall', 'dice', 'nucleus_iou', 'background_iou', 'miou')
CLASS_METRICS = ('precision', 'recall', 'dice', 'iou')
CELL_METRICS = ('cell_dice', 'cell_iou')  # whole cells, with a cytoplasm class only


# ------------------------------------------------------------------------------------------------
# Device side: pure jnp, jit-friendly.
# ------------------------------------------------------------------------------------------------


def per_image_confusion(
  labels: jax.Array, preds: jax.Array, num_classes: int = NUM_CLASSES
) -> jax.Array:
  """Pixel confusion matrix of each image, (B, C, C) int32: cm[b, t, p] = #pixels of image b
  with label t predicted as p.

  labels, preds: (B, ...) int maps. Pixels whose label or prediction is outside [0, C) are not
  counted: their one-hot row is all zeros. A contraction of one_hot(labels) with
  one_hot(preds) over the pixels, no scatter: a scatter-add (`bincount`) piles every pixel of
  an image onto its C*C counters, which serialises a GPU's atomics. In int32, so the counts
  are exact past 2**24 pixels (float32 sums would not be).
  """
  labels, preds = jnp.asarray(labels), jnp.asarray(preds)
  pixels = lambda x: x.reshape(x.shape[0], -1).astype(jnp.int32)
  true = jax.nn.one_hot(pixels(labels), num_classes, dtype=jnp.int32)  # (B, P, C)
  predicted = jax.nn.one_hot(pixels(preds), num_classes, dtype=jnp.int32)
  return jnp.einsum('bpt,bpq->btq', true, predicted, preferred_element_type=jnp.int32)


# ------------------------------------------------------------------------------------------------
# Host side: numpy on confusion matrices; plain Python values out.
# ------------------------------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> Optional[float]:
  """numerator / denominator as a float, or None when the denominator is 0 (undefined)."""
  return None if denominator == 0 else float(numerator) / float(denominator)


def _mean_defined(values) -> Optional[float]:
  """Mean of the values that are not None; None if there are none."""
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


def _check_size(num_classes: int, table: classes.ClassTable) -> None:
  if num_classes != table.num_classes:
    raise ValueError(
      f'{num_classes} classes in the confusion matrix but {table.num_classes} in '
      f'the class table ({table.describe()})'
    )


def _as_cm(cm: Any, table: classes.ClassTable) -> np.ndarray:
  cm = np.asarray(cm, dtype=np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'expected a square (C, C) confusion matrix, got shape {cm.shape}')
  _check_size(cm.shape[0], table)
  return cm


def _binary_counts(cm: np.ndarray, positive_ids: Sequence[int]):
  """(tp, fp, fn, tn) of the classes `positive_ids` (together) vs all others, from a
  (..., C, C) matrix: the nucleus (the cell types' ids) or the whole cell."""
  positive = np.zeros(cm.shape[-1], bool)
  positive[list(positive_ids)] = True
  rows_pos, rows_neg = cm[..., positive, :], cm[..., ~positive, :]
  tp = rows_pos[..., positive].sum((-2, -1))  # positive predicted positive, any class of them
  fn = rows_pos[..., ~positive].sum((-2, -1))
  fp = rows_neg[..., positive].sum((-2, -1))
  tn = rows_neg[..., ~positive].sum((-2, -1))
  return tp, fp, fn, tn


def _cell_ids(table: classes.ClassTable) -> tuple[int, ...]:
  return table.nucleus_ids + ((table.cytoplasm_id,) if table.cytoplasm else ())


def _class_scores(tp: float, fp: float, fn: float) -> dict:
  """precision, recall, dice, iou of one class; all None when tp + fp + fn == 0 (absent).

  When the class is present (in labels or predictions) a 0/0 precision (nothing predicted) or
  recall (nothing labelled) is 0.0: the class was missed, or hallucinated.
  """
  if tp + fp + fn == 0:
    return {k: None for k in CLASS_METRICS}
  return {
    'precision': float(tp) / (tp + fp) if tp + fp else 0.0,
    'recall': float(tp) / (tp + fn) if tp + fn else 0.0,
    'dice': 2.0 * tp / (2.0 * tp + fp + fn),
    'iou': float(tp) / (tp + fp + fn),
  }


def paper_metrics(cm: Any, table: classes.ClassTable = PAPER) -> dict:
  """The paper's metrics of nucleus (any cell type's class) vs the rest, from a (C, C) matrix;
  with a cytoplasm class, also the whole cell's Dice and IoU (`cell_dice`, `cell_iou`: nucleus or
  cytoplasm vs background, 0/0 -> None).

  With TP, FP, FN, TN of the 2x2 collapse (positive = nucleus):
    accuracy       = (TP + TN) / (TP + FP + FN + TN)
    precision      = TP / (TP + FP)
    recall         = TP / (TP + FN)
    dice           = 2TP / (2TP + FP + FN)
    nucleus_iou    = TP / (TP + FP + FN)
    background_iou = TN / (TN + FN + FP)
    miou           = mean(background_iou, nucleus_iou)

  Edge cases: with no nucleus in labels nor predictions (TP + FP + FN = 0) precision, recall,
  dice and nucleus_iou are None; likewise background_iou when TN + FN + FP = 0; miou is the mean
  of the IoUs that are defined; accuracy is None for an empty matrix. When the nucleus is present
  on either side, a 0/0 precision (nothing predicted) or recall (nothing labelled) is 0.0.
  """
  cm = _as_cm(cm, table)
  tp, fp, fn, tn = (int(x) for x in _binary_counts(cm, table.nucleus_ids))
  nucleus = _class_scores(tp, fp, fn)
  background_iou = _ratio(tn, tn + fn + fp)
  out = {
    'accuracy': _ratio(tp + tn, tp + fp + fn + tn),
    'precision': nucleus['precision'],
    'recall': nucleus['recall'],
    'dice': nucleus['dice'],
    'nucleus_iou': nucleus['iou'],
    'background_iou': background_iou,
    'miou': _mean_defined([background_iou, nucleus['iou']]),
  }
  if table.cytoplasm:
    cell = _class_scores(*(int(x) for x in _binary_counts(cm, _cell_ids(table))[:3]))
    out.update(cell_dice=cell['dice'], cell_iou=cell['iou'])
  return out


def class_metrics(cm: Any, table: classes.ClassTable = PAPER) -> dict:
  """Per-class precision, recall, Dice and IoU, each class against all others.

  For class c: TP = cm[c, c], FP = sum(cm[:, c]) - TP, FN = sum(cm[c, :]) - TP, and
    precision = TP / (TP + FP), recall = TP / (TP + FN),
    dice = 2TP / (2TP + FP + FN),  iou = TP / (TP + FP + FN).

  Edge cases:
  - a class absent from both labels and predictions (TP + FP + FN = 0) has all four metrics
    undefined: None in the per-class dicts, left out of the means, named in `absent_classes`;
  - a present class with no predicted pixels has precision 0.0 (not NaN), and one with no
    labelled pixels (only false positives) has recall 0.0; Dice and IoU are then 0.0 as well.

  Returns {'precision'|'recall'|'dice'|'iou': {class_name: float | None},
           'mean_precision'|'mean_recall'|'mean_dice'|'mean_iou': mean over the classes that
             are not absent (background included; None if every class is absent),
           'pixel_accuracy': trace / total (None for an empty matrix),
           'support': {class_name: labelled pixels}, 'absent_classes': [class_name, ...]}.
  """
  cm = _as_cm(cm, table)
  names = table.names
  out = {k: {} for k in CLASS_METRICS}
  absent = []
  for c, name in enumerate(names):
    tp = int(cm[c, c])
    scores = _class_scores(tp, int(cm[:, c].sum()) - tp, int(cm[c, :].sum()) - tp)
    if scores['dice'] is None:
      absent.append(name)
    for k in CLASS_METRICS:
      out[k][name] = scores[k]
  for k in CLASS_METRICS:
    out[f'mean_{k}'] = _mean_defined(out[k].values())
  out['pixel_accuracy'] = _ratio(np.trace(cm), cm.sum())
  out['support'] = {name: int(cm[c, :].sum()) for c, name in enumerate(names)}
  out['absent_classes'] = absent
  return out


def labelled_class_means(per_class: dict) -> dict[str, float | None]:
  """{metric: mean over the classes with labelled pixels} of a `class_metrics` result: a class
  absent from the split's labels (a basophil-free test split) scores 0 on any false positive,
  which says nothing of how well the classes present are segmented."""
  present = [name for name, n in per_class['support'].items() if n > 0]
  return {k: _mean_defined(per_class[k][name] for name in present) for k in CLASS_METRICS}


def _as_cms(per_image_cms: Any, table: classes.ClassTable) -> np.ndarray:
  cms = np.asarray(per_image_cms, dtype=np.int64)
  if cms.ndim != 3 or cms.shape[1] != cms.shape[2]:
    raise ValueError(f'expected (N, C, C) confusion matrices, got shape {cms.shape}')
  _check_size(cms.shape[1], table)
  return cms


def dice_per_image(
  per_image_cms: Any, empty_score: float = 1.0, table: classes.ClassTable = PAPER
) -> np.ndarray:
  """Nucleus Dice of each image, (N,) float64: 2TP / (2TP + FP + FN) of nucleus vs the rest.

  An image with no nucleus in its label nor its prediction (0/0) scores `empty_score` (1.0:
  nothing there and nothing predicted is a perfect answer), as in `per_image_summary`.
  """
  tp, fp, fn, _ = _binary_counts(_as_cms(per_image_cms, table), table.nucleus_ids)
  denominator = 2 * tp + fp + fn
  return np.where(denominator == 0, float(empty_score), 2.0 * tp / np.maximum(denominator, 1))


def _summary(values: Sequence[Optional[float]], fill: Optional[float]) -> dict:
  """mean / std (ddof=0) over images; None values are filled with `fill`, or left out if None."""
  n_undefined = sum(v is None for v in values)
  used = [fill if v is None else v for v in values]
  used = [v for v in used if v is not None]
  return {
    'mean': float(np.mean(used)) if used else None,
    'std': float(np.std(used)) if used else None,
    'n_images': len(used),
    'n_undefined': n_undefined,
  }


def per_image_summary(
  per_image_cms: Any, empty_score: Optional[float] = 1.0, table: classes.ClassTable = PAPER
) -> dict:
  """Mean and std over images of the per-image paper metrics (with whole-cell Dice / IoU when
  the table has a cytoplasm class) and per-class Dice / IoU.

  Each image's metrics are those of `paper_metrics` / `class_metrics` on its own (C, C) matrix;
  std is the population std (ddof=0). Undefined values (0/0) are handled so:
  - paper metrics: an image with no nucleus in label nor prediction scores `empty_score` (1.0:
    a perfect answer) for precision, recall, dice and nucleus_iou (likewise background_iou for an
    image with no background on either side, and every metric of an image with no counted
    pixel); `empty_score=None` leaves such images out instead.
  - per-class Dice / IoU: an image where the class is absent from label and prediction is left
    out of that class's mean, whatever `empty_score` is. Each image holds one cell, so most
    classes are absent from most images; scoring those 1.0 would make every class look perfect.
  Either way `n_undefined` counts the images affected and `n_images` the values averaged.

  Returns {'n_images': N, 'empty_score': empty_score,
           'paper': {metric: {'mean', 'std', 'n_images', 'n_undefined'}},
           'per_class': {'dice'|'iou': {class_name: {'mean', 'std', 'n_images', 'n_undefined'}}}}.
  """
  cms = _as_cms(per_image_cms, table)
  paper = [paper_metrics(cm, table) for cm in cms]
  per_class = [class_metrics(cm, table) for cm in cms]
  names = table.names
  keys = PAPER_METRICS + (CELL_METRICS if table.cytoplasm else ())
  return {
    'n_images': int(cms.shape[0]),
    'empty_score': empty_score,
    'paper': {k: _summary([m[k] for m in paper], empty_score) for k in keys},
    'per_class': {
      k: {name: _summary([m[k][name] for m in per_class], None) for name in names}
      for k in ('dice', 'iou')
    },
  }


# ------------------------------------------------------------------------------------------------
# Per-cell classification: one cell per image, its type voted by the nucleus pixels.
# ------------------------------------------------------------------------------------------------


def voted_cell_type(predicted_pixels: Any, table: classes.ClassTable = PAPER) -> np.ndarray:
  """The cell type voted by predicted pixel counts per class, (..., C) -> (...) int.

  The nucleus class (a cell type's id) with the most pixels wins, ties going to the smaller
  class id; 0 (background) where no nucleus pixel was predicted (cytoplasm pixels do not vote).
  Evaluation votes with the column sums of per-image confusion matrices, prediction with the
  counts of one map: the same rule.
  """
  predicted_pixels = np.asarray(predicted_pixels)
  _check_size(predicted_pixels.shape[-1], table)
  first, last = table.nucleus_ids[0], table.nucleus_ids[-1]  # the ids are consecutive
  nucleus = predicted_pixels[..., first : last + 1]
  return np.where(nucleus.sum(-1) > 0, nucleus.argmax(-1) + first, BACKGROUND)


def predicted_cell_type(
  pred_map: Any, probs: Any = None, table: classes.ClassTable = PAPER
) -> tuple[int, float]:
  """The cell type of one image, voted by its predicted nucleus pixels: (class_id, confidence).

  pred_map: (H, W) int predicted classes; class_id is `voted_cell_type` of its pixel counts.
  confidence = that class's count / #{predicted nucleus pixels}, or, if `probs` (H, W, C)
  softmax probabilities are given, the mean of probs[..., class_id] over all predicted nucleus
  pixels. No predicted nucleus pixel gives (0, 0.0).
  """
  pred_map = np.asarray(pred_map)
  nucleus = np.isin(pred_map, table.nucleus_ids)
  n_nucleus = int(nucleus.sum())
  if n_nucleus == 0:
    return BACKGROUND, 0.0
  votes = np.bincount(pred_map[nucleus].ravel(), minlength=table.num_classes)
  class_id = int(voted_cell_type(votes, table))
  if probs is None:
    return class_id, float(votes[class_id]) / n_nucleus
  probs = np.asarray(probs, dtype=np.float64)
  return class_id, float(probs[..., class_id][nucleus].mean())


def cell_confusion(
  true_types: Any, pred_types: Any, table: classes.ClassTable = PAPER
) -> np.ndarray:
  """Cell-level confusion matrix (T, T) int64 over 0 and the T - 1 cell types' ids: cm[t, p] =
  #cells of true type t predicted p.

  Type 0 means "no nucleus" (none labelled / none predicted).
  """
  num_classes = 1 + len(table.cell_types)
  true_types = np.asarray(true_types, dtype=np.int64).ravel()
  pred_types = np.asarray(pred_types, dtype=np.int64).ravel()
  if true_types.shape != pred_types.shape:
    raise ValueError(f'{true_types.size} true types but {pred_types.size} predicted types')
  for name, types in (('true', true_types), ('predicted', pred_types)):
    if types.size and (types.min() < 0 or types.max() >= num_classes):
      raise ValueError(
        f'{name} cell types must lie in [0, {num_classes}), got [{types.min()}, {types.max()}]'
      )
  counts = np.bincount(true_types * num_classes + pred_types, minlength=num_classes**2)
  return counts.reshape(num_classes, num_classes)


def cell_metrics(cell_cm: Any, table: classes.ClassTable = PAPER) -> dict:
  """Cell-level classification metrics from a `cell_confusion` matrix.

    cell_accuracy = trace / n_cells                    (None when there are no cells)
    recall[c]     = cm[c, c] / sum(cm[c, :])           (None for a type with no cells)
    mean_recall   = mean of the defined recalls (balanced accuracy)
    n_no_nucleus_predicted = sum(cm[:, 0]): cells whose prediction has no nucleus pixel.

  Returns those, plus 'n_cells' and 'confusion_matrix' (nested lists, rows = true type).
  """
  cm = np.asarray(cell_cm, dtype=np.int64)
  names = table.names[: 1 + len(table.cell_types)]
  if cm.shape != (len(names),) * 2:
    raise ValueError(
      f'expected a {len(names)}x{len(names)} cell confusion matrix (no nucleus and '
      f'{table.cell_types}), got shape {cm.shape}'
    )
  recall = {name: _ratio(cm[c, c], cm[c, :].sum()) for c, name in enumerate(names)}
  return {
    'cell_accuracy': _ratio(np.trace(cm), cm.sum()),
    'recall': recall,
    'mean_recall': _mean_defined(recall.values()),
    'n_cells': int(cm.sum()),
    'n_no_nucleus_predicted': int(cm[:, BACKGROUND].sum()),
    'confusion_matrix': cm.tolist(),
  }


# ------------------------------------------------------------------------------------------------
# Calibration: does a cell's confidence say how often such calls are right?
# ------------------------------------------------------------------------------------------------


def calibration(
  confidence: Any, correct: Any, bins: int = 10, uncertain_below: float | None = None
) -> dict:
  """Expected calibration error and a reliability table of cell-type calls.

  The calls are binned by confidence into `bins` equal-width bins of [0, 1]; per bin, its
  count, mean confidence and accuracy; ECE = sum over bins of (count / n) * |accuracy - mean
  confidence| (Guo et al. 2017). With `uncertain_below`: the share of calls below it (flagged
  for review) and the accuracy of the flagged and of the other calls. None where no call is.
  """
  confidence = np.asarray(confidence, np.float64)
  correct = np.asarray(correct, bool)
  n = len(confidence)
  which = np.minimum((confidence * bins).astype(int), bins - 1)
  table = []
  for b in range(bins):
    here = which == b
    if here.any():
      table.append(
        {
          'from': b / bins,
          'to': (b + 1) / bins,
          'n': int(here.sum()),
          'confidence': float(confidence[here].mean()),
          'accuracy': float(correct[here].mean()),
        }
      )
  out = {
    'n': n,
    'accuracy': _ratio(correct.sum(), n),
    'ece': (sum(r['n'] / n * abs(r['accuracy'] - r['confidence']) for r in table) if n else None),
    'reliability': table,
  }
  if uncertain_below is not None:
    flagged = confidence < uncertain_below
    out.update(
      uncertain_below=uncertain_below,
      flagged=_ratio(flagged.sum(), n),
      accuracy_flagged=_ratio(correct[flagged].sum(), flagged.sum()),
      accuracy_kept=_ratio(correct[~flagged].sum(), (~flagged).sum()),
    )
  return out
