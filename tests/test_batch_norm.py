"""batch_norm.BatchNorm computes what flax.linen.BatchNorm computes, with the same variables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wcsegnet_jax.model import batch_norm


def _inputs(shape=(4, 6, 5, 3), dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  # A non-zero mean and an uneven scale per channel, so the statistics matter.
  x = rng.normal(2.0, 1.0, shape) * np.arange(1, shape[-1] + 1)
  return jnp.asarray(x, dtype)


def _init_both(x, momentum=0.9):
  ours = batch_norm.BatchNorm(use_running_average=False, momentum=momentum)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=momentum)
  variables = flax_bn.init(jax.random.key(0), x)
  rng = np.random.default_rng(1)
  c = x.shape[-1]
  # Trained-looking parameters and statistics, shared by both modules.
  variables = {
    'params': {
      'scale': jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=c), jnp.float32),
    },
    'batch_stats': {
      'mean': jnp.asarray(rng.normal(size=c), jnp.float32),
      'var': jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
    },
  }
  return ours, flax_bn, variables


def test_variables_have_flaxs_names_shapes_and_initial_values():
  x = _inputs()
  ours = batch_norm.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  theirs = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_training_output_and_running_statistics_match_flax():
  x = _inputs()
  ours, flax_bn, variables = _init_both(x)
  y, updates = ours.apply(variables, x, mutable=['batch_stats'])
  y_ref, updates_ref = flax_bn.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for key in ('mean', 'var'):
    np.testing.assert_allclose(
      updates['batch_stats'][key], updates_ref['batch_stats'][key], rtol=1e-5, atol=1e-6
    )
  # The output is normalised per channel: zero mean and the parameters' scale.
  y_hat = (y - variables['params']['bias']) / variables['params']['scale']
  np.testing.assert_allclose(y_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y_hat.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_evaluation_uses_the_running_statistics_as_flax_does():
  x = _inputs()
  _, _, variables = _init_both(x)
  y = batch_norm.BatchNorm(use_running_average=True).apply(variables, x)
  y_ref = nn.BatchNorm(use_running_average=True).apply(variables, x)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_init_leaves_the_running_statistics_alone():
  x = _inputs()
  variables = batch_norm.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables['batch_stats']['mean'], 0.0)
  np.testing.assert_array_equal(variables['batch_stats']['var'], 1.0)


def test_gradients_match_flax_autodiff():
  x = _inputs()
  ours, flax_bn, variables = _init_both(x)
  weights = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)

  def loss(module, params, x):
    y, _ = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
    return jnp.sum(jnp.tanh(y) * weights)  # a non-linear loss: dy varies per element

  grads = jax.grad(loss, argnums=(1, 2))(ours, variables['params'], x)
  grads_ref = jax.grad(loss, argnums=(1, 2))(flax_bn, variables['params'], x)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_through_the_statistics_matches_autodiff():
  # Nothing in training differentiates the batch statistics, but the custom gradient should
  # still be right if something does.
  x = _inputs()
  scale, bias = jnp.full((3,), 1.5), jnp.full((3,), 0.2)

  def through_stats(x):
    _, mean, var = batch_norm.normalize(x, scale, bias, 1e-5)
    return jnp.sum(mean * jnp.arange(3.0)) + jnp.sum(jnp.sqrt(var))

  def reference(x):
    rows = x.reshape(-1, 3)
    return jnp.sum(rows.mean(0) * jnp.arange(3.0)) + jnp.sum(jnp.sqrt(rows.var(0)))

  np.testing.assert_allclose(
    jax.grad(through_stats)(x), jax.grad(reference)(x), rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize('train', [True, False])
def test_bfloat16_inputs_give_float32_outputs_as_flax(train):
  x = _inputs(dtype=jnp.bfloat16)
  ours, flax_bn, variables = _init_both(x)
  kwargs = {'mutable': ['batch_stats']} if train else {}
  y = batch_norm.BatchNorm(use_running_average=not train).apply(variables, x, **kwargs)
  y_ref = nn.BatchNorm(use_running_average=not train).apply(variables, x, **kwargs)
  if train:
    y, y_ref = y[0], y_ref[0]
  assert y.dtype == y_ref.dtype == jnp.float32
  np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
  dx = jax.grad(lambda x: jnp.sum(ours.apply(variables, x, mutable=['batch_stats'])[0] ** 2))(x)
  assert dx.dtype == jnp.bfloat16
