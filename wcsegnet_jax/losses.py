"""Training losses: categorical cross-entropy (optionally class-weighted) and Dice + CE."""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from wcsegnet_jax import metrics


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


def make_loss_fn(train_config: ml_collections.ConfigDict) -> Callable:
  """(logits (B,H,W,C), int labels (B,H,W)) -> scalar loss, as `train.loss` configures."""
  weights = tuple(train_config.class_weights)

  def loss_fn(logits, labels):
    loss = cross_entropy(logits, labels, weights)
    if train_config.loss == 'dice_ce':
      loss = loss + train_config.dice_weight * metrics.soft_dice_loss(
          logits, labels, class_weights=weights or None)
    return loss

  return loss_fn
