"""uint8 images to the float32 a net takes, on the device: per channel by the data's mean and std,
or each image by its own (`data.normalize`). Training, evaluation and prediction share this."""

import jax.numpy as jnp
import ml_collections


# Floor of an image channel's std under per_image normalisation, in 0..1 units: a flat channel
# (a blank or saturated crop) is centred, not blown up to unit variance.
_MIN_IMAGE_STD = 1.0 / 255.0


def normalize_images(images: jnp.ndarray, mean, std) -> jnp.ndarray:
  """uint8 (..., 3) in 0..255 -> float32 standardised per channel (runs inside jit)."""
  scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
  return (images.astype(jnp.float32) - 255.0 * jnp.asarray(mean, jnp.float32)) * scale


def standardize_each_image(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 (..., H, W, 3) -> float32, each image's channels to zero mean and unit std over its
  own pixels (runs inside jit)."""
  x = images.astype(jnp.float32) / 255.0
  mean = x.mean(axis=(-3, -2), keepdims=True)
  std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=(-3, -2), keepdims=True))
  return (x - mean) / jnp.maximum(std, _MIN_IMAGE_STD)


def model_inputs(images: jnp.ndarray, data_config: ml_collections.ConfigDict) -> jnp.ndarray:
  """uint8 images -> the float32 the net takes, as `data.normalize` says (runs inside jit)."""
  if data_config.normalize == 'per_image':
    return standardize_each_image(images)
  return normalize_images(images, data_config.mean, data_config.std)
