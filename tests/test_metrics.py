"""Tests of wcsegnet_jax.metrics: hand-worked examples, edge cases, and scikit-learn agreement."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from wcsegnet_jax.core.classes import CLASS_NAMES
from wcsegnet_jax.core.classes import NUM_CLASSES
from wcsegnet_jax.model import metrics

approx = pytest.approx

# A 2x3 example used by several tests.
#   labels  0 1 1     preds  0 1 2
#           0 2 3            1 2 0
# Pixels (true, pred): (0,0) (1,1) (1,2) (0,1) (2,2) (3,0).
LABELS = np.array([[[0, 1, 1], [0, 2, 3]]])
PREDS = np.array([[[0, 1, 2], [1, 2, 0]]])
CM = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]])


def _no_nan(tree):
  """True if no float in a nested dict / list is NaN."""
  leaves = jax.tree_util.tree_leaves(tree)  # None leaves are dropped, as they should be
  return not any(isinstance(v, float) and math.isnan(v) for v in leaves)


def pooled_confusion(labels, preds):
  """The pooled matrix as evaluation makes it: the sum of the per-image matrices."""
  return np.asarray(metrics.per_image_confusion(labels, preds)).sum(0)


# --- confusion matrices --------------------------------------------------------------------------


def test_per_image_confusion_hand_example():
  cm = metrics.per_image_confusion(LABELS, PREDS)
  assert cm.dtype == jnp.int32
  np.testing.assert_array_equal(cm, CM[None])


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_per_image_confusion_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=(5, 17, 13))
  preds = rng.integers(0, NUM_CLASSES, size=(5, 17, 13))
  expected = sk_confusion_matrix(labels.ravel(), preds.ravel(), labels=range(NUM_CLASSES))
  np.testing.assert_array_equal(pooled_confusion(labels, preds), expected)
  per_image = np.asarray(jax.jit(metrics.per_image_confusion)(labels, preds))
  np.testing.assert_array_equal(per_image.sum(0), expected)
  np.testing.assert_array_equal(pooled_confusion(labels, preds), expected)

  # Evaluation leaves out the padding examples of its last batch by their rows (`valid`).
  keep = np.array([1, 0, 1, 1, 0], bool)
  expected_kept = sk_confusion_matrix(
    labels[keep].ravel(), preds[keep].ravel(), labels=range(NUM_CLASSES)
  )
  np.testing.assert_array_equal(per_image[keep].sum(0), expected_kept)


def test_per_image_confusion_ignores_out_of_range_labels():
  labels = np.array([[0, 255, 1, -1]])
  preds = np.array([[0, 1, 1, 2]])
  cm = metrics.per_image_confusion(labels, preds)[0]
  expected = np.zeros((4, 4), int)
  expected[0, 0] = expected[1, 1] = 1
  np.testing.assert_array_equal(cm, expected)


def test_per_image_confusion_counts_exactly_past_float32():
  # 4097**2 = 16785409 > 2**24 is odd, so float32 cannot hold it; int32 counts must.
  labels = jnp.zeros((1, 4097, 4097), jnp.uint8)
  cm = jax.jit(metrics.per_image_confusion)(labels, labels)
  assert int(cm[0, 0, 0]) == 4097**2


def test_per_image_confusion_keeps_images_apart():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, NUM_CLASSES, size=(6, 9, 11))
  preds = rng.integers(0, NUM_CLASSES, size=(6, 9, 11))
  per_image = jax.jit(metrics.per_image_confusion)(labels, preds)
  assert per_image.shape == (6, NUM_CLASSES, NUM_CLASSES) and per_image.dtype == jnp.int32
  for b in range(6):
    expected = sk_confusion_matrix(labels[b].ravel(), preds[b].ravel(), labels=range(NUM_CLASSES))
    np.testing.assert_array_equal(per_image[b], expected)


def _bincount_confusion(labels, preds, num_classes):
  """The scatter-add (`bincount`) formulation the one-hot contraction replaced: the reference."""
  labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
  valid = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
  image = np.arange(labels.shape[0]).reshape((-1,) + (1,) * (labels.ndim - 1))
  index = (image * num_classes + labels) * num_classes + preds
  counts = np.bincount(index[valid], minlength=labels.shape[0] * num_classes**2)
  return counts.reshape(labels.shape[0], num_classes, num_classes)


@pytest.mark.parametrize('num_classes', [2, NUM_CLASSES, 6])
def test_one_hot_confusion_equals_bincount_with_out_of_range_values(num_classes):
  """Labels and predictions from -3 to C+2 (ignore values, stray ids) on random maps."""
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(-3, num_classes + 3, size=(7, 15, 12))
  preds = rng.integers(-3, num_classes + 3, size=(7, 15, 12))
  got = np.asarray(
    jax.jit(metrics.per_image_confusion, static_argnums=2)(labels, preds, num_classes)
  )
  np.testing.assert_array_equal(got, _bincount_confusion(labels, preds, num_classes))
  assert 0 < got.sum() < labels.size  # some pixels were left out, some counted
  as_uint8 = np.where(labels < 0, 255, labels).astype(np.uint8)  # 255: the usual ignore value
  np.testing.assert_array_equal(
    metrics.per_image_confusion(as_uint8, preds, num_classes),
    _bincount_confusion(as_uint8, preds, num_classes),
  )


# --- paper metrics (nucleus vs background) -------------------------------------------------------


def test_paper_metrics_hand_example():
  # Collapsed: TN = cm[0,0] = 1; FP = cm[0,1:] = 1; FN = cm[1:,0] = 1 (the lymphocyte pixel
  # predicted background); TP = cm[1:,1:] = 3 (a basophil predicted as neutrophil counts: binary).
  m = metrics.paper_metrics(CM)
  assert m['accuracy'] == approx(4 / 6)  # (TP + TN) / 6
  assert m['precision'] == approx(3 / 4)  # 3 / (3 + 1)
  assert m['recall'] == approx(3 / 4)  # 3 / (3 + 1)
  assert m['dice'] == approx(6 / 8)  # 2*3 / (2*3 + 1 + 1)
  assert m['nucleus_iou'] == approx(3 / 5)  # 3 / (3 + 1 + 1)
  assert m['background_iou'] == approx(1 / 3)  # 1 / (1 + 1 + 1)
  assert m['miou'] == approx((3 / 5 + 1 / 3) / 2)  # 7/15
  json.dumps(m)


def test_paper_metrics_empty_prediction():
  # labels 0 1 1 / 0 0 1, prediction all background: TN = 3, FN = 3, TP = FP = 0.
  labels = np.array([[[0, 1, 1], [0, 0, 1]]])
  m = metrics.paper_metrics(pooled_confusion(labels, np.zeros_like(labels)))
  assert m['accuracy'] == approx(0.5)
  assert m['precision'] == 0.0  # nothing predicted, nucleus labelled: 0, not NaN
  assert m['recall'] == 0.0
  assert m['dice'] == 0.0
  assert m['nucleus_iou'] == 0.0
  assert m['background_iou'] == approx(0.5)  # 3 / (3 + 3 + 0)
  assert m['miou'] == approx(0.25)


def test_paper_metrics_hallucinated_nucleus():
  # No nucleus labelled, 2 of 4 pixels predicted nucleus: TN = 2, FP = 2.
  labels = np.zeros((1, 2, 2), int)
  preds = np.array([[[0, 3], [1, 0]]])
  m = metrics.paper_metrics(pooled_confusion(labels, preds))
  assert m['precision'] == 0.0 and m['recall'] == 0.0 and m['dice'] == 0.0
  assert m['background_iou'] == approx(0.5)
  assert m['miou'] == approx(0.25)


def test_paper_metrics_empty_vs_empty_is_undefined_not_nan():
  m = metrics.paper_metrics(pooled_confusion(np.zeros((1, 3, 3), int), np.zeros((1, 3, 3), int)))
  for k in ('precision', 'recall', 'dice', 'nucleus_iou'):
    assert m[k] is None
  assert m['accuracy'] == 1.0 and m['background_iou'] == 1.0
  assert m['miou'] == 1.0  # mean of the defined IoUs only
  assert metrics.paper_metrics(np.zeros((4, 4), int))['accuracy'] is None


# --- per-class metrics ---------------------------------------------------------------------------


def test_class_metrics_hand_example():
  # Per class c: TP = CM[c,c], FP = column sum - TP, FN = row sum - TP.
  #   background  TP 1 FP 1 FN 1: P 1/2, R 1/2, Dice 2/4, IoU 1/3
  #   neutrophil  TP 1 FP 1 FN 1: P 1/2, R 1/2, Dice 2/4, IoU 1/3
  #   basophil    TP 1 FP 1 FN 0: P 1/2, R 1,   Dice 2/3, IoU 1/2
  #   lymphocyte  TP 0 FP 0 FN 1: P 0 (nothing predicted), R 0, Dice 0, IoU 0
  m = metrics.class_metrics(CM)
  expected = {
    'precision': [1 / 2, 1 / 2, 1 / 2, 0.0],
    'recall': [1 / 2, 1 / 2, 1.0, 0.0],
    'dice': [1 / 2, 1 / 2, 2 / 3, 0.0],
    'iou': [1 / 3, 1 / 3, 1 / 2, 0.0],
  }
  for k, values in expected.items():
    assert list(m[k]) == list(CLASS_NAMES)
    assert [m[k][name] for name in CLASS_NAMES] == approx(values)
  assert m['mean_precision'] == approx(1.5 / 4)  # 0.375
  assert m['mean_recall'] == approx(2 / 4)  # 0.5
  assert m['mean_dice'] == approx((5 / 3) / 4)  # 5/12
  assert m['mean_iou'] == approx((7 / 6) / 4)  # 7/24
  assert m['pixel_accuracy'] == approx(3 / 6)  # trace / total
  assert m['support'] == {'background': 2, 'neutrophil': 2, 'basophil': 1, 'lymphocyte': 1}
  assert m['absent_classes'] == []
  json.dumps(m)


def test_class_metrics_empty_prediction_and_absent_classes():
  # labels 0 1 1 / 0 0 1, prediction all background: cm[0,0] = 3, cm[1,0] = 3.
  #   background TP 3 FP 3 FN 0: P 1/2, R 1, Dice 6/9, IoU 1/2
  #   neutrophil TP 0 FP 0 FN 3: all 0.0; basophil, lymphocyte: absent -> None.
  labels = np.array([[[0, 1, 1], [0, 0, 1]]])
  m = metrics.class_metrics(pooled_confusion(labels, np.zeros_like(labels)))
  assert m['absent_classes'] == ['basophil', 'lymphocyte']
  for k in metrics.CLASS_METRICS:
    assert m[k]['basophil'] is None and m[k]['lymphocyte'] is None
    assert m[k]['neutrophil'] == 0.0
  assert m['dice']['background'] == approx(2 / 3)
  assert m['mean_dice'] == approx(1 / 3)  # (2/3 + 0) / 2, absent classes left out
  assert m['mean_iou'] == approx(1 / 4)
  assert m['mean_precision'] == approx(1 / 4)
  assert m['mean_recall'] == approx(1 / 2)
  assert _no_nan(m)


def test_class_metrics_hallucinated_class_has_zero_recall():
  labels = np.zeros((1, 1, 4), int)
  preds = np.array([[[0, 0, 3, 3]]])
  m = metrics.class_metrics(pooled_confusion(labels, preds))
  assert m['recall']['lymphocyte'] == 0.0 and m['precision']['lymphocyte'] == 0.0
  assert m['absent_classes'] == ['neutrophil', 'basophil']
  assert _no_nan(m)


def test_class_metrics_all_absent():
  m = metrics.class_metrics(np.zeros((4, 4), int))
  assert m['absent_classes'] == list(CLASS_NAMES)
  assert m['mean_dice'] is None and m['pixel_accuracy'] is None


# --- per-image summaries -------------------------------------------------------------------------


def _three_images():
  # A: perfect neutrophil (nucleus Dice 1); B: basophil missed entirely (Dice 0);
  # C: no nucleus in label nor prediction (Dice undefined).
  labels = np.array([[[0, 1], [1, 0]], [[0, 2], [2, 0]], [[0, 0], [0, 0]]])
  preds = np.array([[[0, 1], [1, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
  return metrics.per_image_confusion(labels, preds)


def test_dice_per_image():
  cms = _three_images()
  np.testing.assert_allclose(metrics.dice_per_image(cms), [1.0, 0.0, 1.0])
  np.testing.assert_allclose(metrics.dice_per_image(cms, empty_score=0.0), [1.0, 0.0, 0.0])


def test_per_image_summary():
  s = metrics.per_image_summary(_three_images())
  json.dumps(s)
  assert s['n_images'] == 3
  dice = s['paper']['dice']  # [1, 0, 1 (empty-vs-empty convention)]
  assert dice['mean'] == approx(2 / 3)
  assert dice['std'] == approx(math.sqrt(2) / 3)  # population std of [1, 0, 1]
  assert dice['n_undefined'] == 1 and dice['n_images'] == 3
  assert s['paper']['accuracy']['n_undefined'] == 0
  assert s['paper']['accuracy']['mean'] == approx((1 + 0.5 + 1) / 3)

  # Per class, images where the class is absent on both sides are left out.
  neutrophil = s['per_class']['dice']['neutrophil']
  assert neutrophil['mean'] == 1.0 and neutrophil['n_images'] == 1
  assert neutrophil['n_undefined'] == 2
  assert s['per_class']['dice']['basophil']['mean'] == 0.0
  lymphocyte = s['per_class']['iou']['lymphocyte']
  assert lymphocyte['mean'] is None and lymphocyte['n_undefined'] == 3
  # background Dice: A 1; B TP 2, FP 2, FN 0 -> 4/6; C 1.
  assert s['per_class']['dice']['background']['mean'] == approx((1 + 2 / 3 + 1) / 3)
  assert _no_nan(s)

  excluded = metrics.per_image_summary(_three_images(), empty_score=None)['paper']['dice']
  assert excluded['mean'] == approx(0.5) and excluded['n_images'] == 2
  assert excluded['n_undefined'] == 1


# --- per-cell classification ---------------------------------------------------------------------


def test_predicted_cell_type_majority_and_confidence():
  # Nucleus pixels: 1, 1, 2, 1, 3 -> neutrophil wins 3 votes of 5.
  pred_map = np.array([[0, 1, 1], [2, 1, 3]])
  assert metrics.predicted_cell_type(pred_map) == (1, approx(3 / 5))

  probs = np.full((2, 3, 4), 0.0)
  probs[..., 1] = [[0.9, 0.8, 0.6], [0.2, 0.7, 0.1]]
  probs[..., 0] = 1.0 - probs[..., 1]
  # Mean of p(neutrophil) over the 5 nucleus pixels: (0.8 + 0.6 + 0.2 + 0.7 + 0.1) / 5 = 0.48.
  class_id, confidence = metrics.predicted_cell_type(pred_map, probs)
  assert class_id == 1 and confidence == approx(0.48)
  assert isinstance(class_id, int) and isinstance(confidence, float)


def test_predicted_cell_type_ties_and_empty():
  assert metrics.predicted_cell_type(np.array([[3, 2, 0]])) == (2, 0.5)  # tie -> smaller id
  assert metrics.predicted_cell_type(np.zeros((4, 4), int)) == (0, 0.0)
  assert metrics.predicted_cell_type(jnp.zeros((4, 4), jnp.int32), np.full((4, 4, 4), 0.25)) == (
    0,
    0.0,
  )


def test_voted_cell_type_of_a_label_map():
  # A label map votes as a prediction does: its majority nucleus class, 0 without nucleus.
  assert metrics.predicted_cell_type(np.array([[0, 3, 3], [0, 2, 0]]))[0] == 3
  assert metrics.predicted_cell_type(np.zeros((3, 3), int))[0] == 0


@pytest.mark.parametrize('seed', [0, 1])
def test_voted_cell_type_from_per_image_confusion_matches_the_map_vote(seed):
  # Evaluation votes with the predicted-pixel counts of per-image matrices (their column sums),
  # prediction with the pixels of one map: the same type for every image, ties included.
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=(40, 4, 4))
  preds = rng.choice(NUM_CLASSES, size=(40, 4, 4), p=(0.85, 0.05, 0.05, 0.05))
  preds[0] = 0  # an image with no predicted nucleus
  voted = metrics.voted_cell_type(np.asarray(metrics.per_image_confusion(labels, preds)).sum(1))
  assert voted.shape == (40,) and voted[0] == 0
  assert list(voted) == [metrics.predicted_cell_type(p)[0] for p in preds]
  assert metrics.voted_cell_type([0, 2, 2, 1]) == 1  # tie -> smaller id


def test_cell_confusion_and_metrics():
  # true 1 1 2 3 3, predicted 1 2 2 0 3.
  cm = metrics.cell_confusion([1, 1, 2, 3, 3], [1, 2, 2, 0, 3])
  expected = np.zeros((4, 4), int)
  expected[1, 1] = expected[1, 2] = expected[2, 2] = expected[3, 0] = expected[3, 3] = 1
  np.testing.assert_array_equal(cm, expected)
  m = metrics.cell_metrics(cm)
  json.dumps(m)
  assert m['cell_accuracy'] == approx(3 / 5)
  assert m['recall'] == {'background': None, 'neutrophil': 0.5, 'basophil': 1.0, 'lymphocyte': 0.5}
  assert m['mean_recall'] == approx(2 / 3)
  assert m['n_cells'] == 5 and m['n_no_nucleus_predicted'] == 1
  assert m['confusion_matrix'] == expected.tolist()
  with pytest.raises(ValueError):
    metrics.cell_confusion([1, 4], [1, 1])


def test_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
  # Bin [0.9, 1.0): 4 calls at 0.95, 3 right (0.75) -> gap 0.2; bin [0.5, 0.6): 2 at 0.55,
  # both right -> gap 0.45. ECE = 4/6 * 0.2 + 2/6 * 0.45.
  out = metrics.calibration(
    [0.95] * 4 + [0.55] * 2, [1, 1, 1, 0, 1, 1], bins=10, uncertain_below=0.6
  )
  assert out['ece'] == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.45)
  assert [(r['n'], r['accuracy']) for r in out['reliability']] == [(2, 1.0), (4, 0.75)]
  assert out['flagged'] == pytest.approx(2 / 6)
  assert out['accuracy_flagged'] == 1.0 and out['accuracy_kept'] == 0.75
  perfect = metrics.calibration([1.0, 1.0, 0.0], [1, 1, 0])  # confidence 1.0 lands in the top bin
  assert perfect['ece'] == pytest.approx(0.0)
  assert metrics.calibration([], [])['ece'] is None
