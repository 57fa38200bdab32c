"""Losses: cross-entropy against optax's, class weighting, soft Dice, Dice + CE."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from wcsegnet_jax.core.classes import NUM_CLASSES
from wcsegnet_jax.model import losses

approx = pytest.approx


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
  np.testing.assert_allclose(
    losses.cross_entropy(logits, labels, weights), (w * ce).sum() / w.sum(), rtol=1e-6
  )


def test_dice_ce_adds_the_weighted_soft_dice():
  logits, labels = _logits_and_labels(2)
  config = base.get_config().train
  config.loss, config.dice_weight = 'dice_ce', 0.5
  expected = losses.cross_entropy(logits, labels) + 0.5 * losses.soft_dice_loss(logits, labels)
  np.testing.assert_allclose(losses.make_loss_fn(config)(logits, labels), expected, rtol=1e-6)


def test_bfloat16_logits_give_a_float32_loss():
  logits, labels = _logits_and_labels(3)
  loss = losses.cross_entropy(logits.astype(jnp.bfloat16), labels)
  assert loss.dtype == jnp.float32 and jnp.isfinite(loss)


# --- soft Dice loss ------------------------------------------------------------------------------


def _labels(seed=0, shape=(2, 8, 8)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, NUM_CLASSES, size=shape))


def test_soft_dice_loss_perfect_wrong_and_gradient():
  labels = _labels()
  perfect = 20.0 * jax.nn.one_hot(labels, NUM_CLASSES)
  wrong = 20.0 * jax.nn.one_hot((labels + 1) % NUM_CLASSES, NUM_CLASSES)
  uniform = jnp.zeros_like(perfect)
  loss = jax.jit(losses.soft_dice_loss)
  assert float(loss(perfect, labels)) == approx(0.0, abs=1e-5)
  assert float(loss(wrong, labels)) > 0.9
  assert 0.1 < float(loss(uniform, labels)) < float(loss(wrong, labels))

  grad = jax.grad(losses.soft_dice_loss)(uniform, labels)
  assert grad.shape == uniform.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_soft_dice_loss_class_weights_absent_class_and_ignored_pixels():
  labels = jnp.array([[[0, 1], [1, 0]]])  # basophil, lymphocyte absent
  logits = jnp.zeros((1, 2, 2, NUM_CLASSES))
  # Uniform softmax p = 1/4. Unsmoothed (eps=0) Dice of neutrophil: 2 * (2p) / (4p + 2) = 1/3.
  only_neutrophil = losses.soft_dice_loss(logits, labels, class_weights=(0, 1, 0, 0), eps=0.0)
  assert float(only_neutrophil) == approx(1 - 1 / 3, rel=1e-6)
  # With eps = 1 and a perfect prediction, absent classes score Dice 1 (loss 0), not 0/0.
  perfect = 20.0 * jax.nn.one_hot(labels, NUM_CLASSES)
  assert float(losses.soft_dice_loss(perfect, labels)) == approx(0.0, abs=1e-5)
  # Pixels labelled out of range (ignore) do not change the loss, whatever is predicted there.
  ignored = jnp.array([[[0, 1, 255], [1, 0, 255]]])
  wrong_there = jnp.concatenate([perfect, 20.0 * jnp.ones((1, 2, 1, NUM_CLASSES))], axis=2)
  assert float(losses.soft_dice_loss(wrong_there, ignored)) == approx(
    float(losses.soft_dice_loss(perfect, labels)), abs=1e-6
  )
