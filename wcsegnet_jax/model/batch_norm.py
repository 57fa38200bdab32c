"""Batch normalisation with its statistics and gradient written as matrix products.

Same maths, same variables (`params/scale`, `params/bias`, `batch_stats/mean`,
`batch_stats/var`) and same defaults as `flax.linen.BatchNorm`, so checkpoints move between
the two. Why not Flax's: on XLA:CPU its per-channel sums over batch x height x width become
`reduce-window` loops that took ~90 ms of the CPU recipe's ~440 ms training step; here the
forward statistics and the backward pass's two sums are products with a ones vector, which
XLA hands to its matrix-product library, and the backward pass is the closed form rather than
autodiff's chain of broadcasts and reductions: the step fell to ~385 ms (docs/benchmarks.md).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

# Full float32 products on every backend: on a GPU the default would be TF32, whose 10-bit
# mantissa is too coarse for E[x^2] - E[x]^2.
_PRECISION = jax.lax.Precision.HIGHEST


def _column_sums(rows: jax.Array) -> jax.Array:
  """Sum over the rows of a (n, c) float32 array, as a product (see the module docstring)."""
  return jnp.dot(jnp.ones((rows.shape[0],), rows.dtype), rows, precision=_PRECISION)


def _moments(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-column mean and (biased) variance; E[x^2] - E[x]^2 clipped at 0, as Flax's default."""
  n = rows.shape[0]
  mean = _column_sums(rows) / n
  mean_of_squares = _column_sums(rows * rows) / n
  return mean, jnp.maximum(mean_of_squares - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(
  x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, mean, var): float32 `x` normalised over all axes but the last."""
  outputs, _ = _normalize_fwd(x, scale, bias, epsilon)
  return outputs


def _normalize_fwd(x, scale, bias, epsilon):
  channels = x.shape[-1]
  rows = x.reshape(-1, channels)
  mean, var = _moments(rows)
  inv_std = jax.lax.rsqrt(var + epsilon)
  x_hat = (rows - mean) * inv_std
  y = (x_hat * scale + bias).reshape(x.shape)
  return (y, mean, var), (x_hat, inv_std, scale)


def _normalize_bwd(epsilon, residuals, cotangents):
  del epsilon
  x_hat, inv_std, scale = residuals
  dy, dmean, dvar = cotangents
  n, channels = x_hat.shape
  dy = dy.reshape(n, channels)
  dbias = _column_sums(dy)
  dscale = _column_sums(dy * x_hat)
  # d/dx of y = scale * (x - mean(x)) / std(x) + bias, summed over the batch it normalised:
  dx = (scale * inv_std / n) * (n * dy - dbias - x_hat * dscale)
  # The statistics themselves (kept as running averages, which nothing differentiates).
  dx = dx + (dmean + 2.0 * dvar * x_hat / inv_std) / n
  return dx.reshape(cotangents[0].shape), dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis, with the faster statistics above.

  Outputs float32 whatever the input dtype, as Flax's does with float32 parameters.
  """

  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (channels,), jnp.float32)
    if self.use_running_average:
      inv_std = jax.lax.rsqrt(running_var.value + self.epsilon)
      return (x.astype(jnp.float32) - running_mean.value) * (scale * inv_std) + bias
    # In float32 whatever the input (the cast's own gradient casts back).
    y, mean, var = normalize(x.astype(jnp.float32), scale, bias, self.epsilon)
    if not self.is_initializing():
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      running_var.value = m * running_var.value + (1 - m) * jax.lax.stop_gradient(var)
    return y
