"""Losses: cross-entropy against optax's, class weighting, Dice + CE."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import base
from wcsegnet_jax import losses
from wcsegnet_jax import metrics


def _logits_and_labels(seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k1, (2, 6, 5, 4)) * 3, jax.random.randint(k2, (2, 6, 5), 0, 4)


def test_cross_entropy_equals_optax():
  logits, labels = _logits_and_labels()
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_class_weights_give_the_weighted_mean():
  logits, labels = _logits_and_labels(1)
  weights = (0.5, 1.0, 4.0, 2.0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  w = jnp.asarray(weights)[labels]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, weights),
                             (w * ce).sum() / w.sum(), rtol=1e-6)


def test_dice_ce_adds_the_weighted_soft_dice():
  logits, labels = _logits_and_labels(2)
  config = base.get_config().train
  config.loss, config.dice_weight = 'dice_ce', 0.5
  expected = losses.cross_entropy(logits, labels) + 0.5 * metrics.soft_dice_loss(logits, labels)
  np.testing.assert_allclose(losses.make_loss_fn(config)(logits, labels), expected, rtol=1e-6)


def test_bfloat16_logits_give_a_float32_loss():
  logits, labels = _logits_and_labels(3)
  loss = losses.cross_entropy(logits.astype(jnp.bfloat16), labels)
  assert loss.dtype == jnp.float32 and jnp.isfinite(loss)
