"""Training losses: categorical cross-entropy (optionally class-weighted) and Dice + CE."""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections


def cross_entropy(logits: jax.Array, labels: jax.Array, class_weights=()) -> jax.Array:
  """Mean pixel cross-entropy; with class weights, a weighted mean (sum w*ce / sum w).

  Basophils are rare (one or two per dataset), so weighting lets their pixels count.
  """
  # One-hot against log-softmax rather than a gather of the label's logit: it fuses into one
  # elementwise pass, and its gradient has no scatter (which XLA's CPU compiler constant-folds
  # for seconds and GPUs run slower than a fused multiply).
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.sum(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * log_probs, -1)
  if not class_weights:
    return ce.mean()
  w = jnp.asarray(class_weights, jnp.float32)[labels]
  return (w * ce).sum() / jnp.maximum(w.sum(), 1e-12)


def soft_dice_loss(
  logits: jax.Array,
  labels: jax.Array,
  class_weights: Optional[Sequence[float]] = None,
  eps: float = 1.0,
) -> jax.Array:
  """Soft Dice loss, a differentiable scalar.

  p = softmax(logits) (B, H, W, C), y = one_hot(labels) (B, H, W, C), C the logits' classes
  (the data's: `classes.ClassTable.num_classes`); sums run over the whole
  batch and all pixels (a "batch Dice", not a mean of per-image Dice):

    dice_c = (2 * sum(p_c * y_c) + eps) / (sum(p_c) + sum(y_c) + eps)
    loss   = sum_c w_c * (1 - dice_c) / sum_c w_c          (w_c = 1 when class_weights is None)

  The smoothing `eps` makes a class absent from both labels and predictions score dice = 1
  (loss 0) instead of 0/0. Pixels whose label is outside [0, C) are left out of all sums, as
  the confusion matrices of `metrics` leave them out.
  Computed in float32 whatever the logits' dtype. `class_weights` None or empty = unweighted.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  labels = jnp.asarray(labels).astype(jnp.int32)
  num_classes = logits.shape[-1]
  valid = ((labels >= 0) & (labels < num_classes)).astype(jnp.float32)[..., None]
  probs = probs * valid
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # out-of-range -> all zeros
  axes = tuple(range(probs.ndim - 1))
  intersection = jnp.sum(probs * onehot, axis=axes)
  denominator = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = (2.0 * intersection + eps) / (denominator + eps)
  if class_weights is None or len(class_weights) == 0:
    return jnp.mean(1.0 - dice)
  w = jnp.asarray(class_weights, jnp.float32)
  return jnp.sum(w * (1.0 - dice)) / jnp.sum(w)


def make_loss_fn(train_config: ml_collections.ConfigDict) -> Callable:
  """(logits (B,H,W,C), int labels (B,H,W)) -> scalar loss, as `train.loss` configures."""
  weights = tuple(train_config.class_weights)

  def loss_fn(logits, labels):
    loss = cross_entropy(logits, labels, weights)
    if train_config.loss == 'dice_ce':
      loss = loss + train_config.dice_weight * soft_dice_loss(
        logits, labels, class_weights=weights or None
      )
    return loss

  return loss_fn
