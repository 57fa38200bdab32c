"""A model's class probabilities for a batch of uint8 images, with test-time augmentation (TTA:
the prediction averaged over flipped, optionally rotated, copies of each image): the one forward
path that evaluation, prediction and benchmarks share."""

from typing import Callable

import jax
import jax.numpy as jnp

from wcsegnet_jax.data import normalize


def tta_views(rotations: bool) -> list[tuple[Callable, Callable]]:
  """[(view, undo)] of (B, H, W, C) arrays, identity first: the four flips (identity,
  left-right, up-down, both), or with `rotations` the eight symmetries of the square (the four
  quarter turns, each also mirrored). A cell has no up or left; square images are assumed."""

  def flip(axes):
    return lambda x: jnp.flip(x, axes) if axes else x

  if not rotations:
    return [(flip(axes), flip(axes)) for axes in ((), (2,), (1,), (1, 2))]
  turn = lambda k: lambda x: jnp.rot90(x, k, axes=(1, 2))
  return [
    (lambda x, k=k, m=m: flip(m)(turn(k)(x)), lambda y, k=k, m=m: turn(-k)(flip(m)(y)))
    for k in range(4)
    for m in ((), (2,))
  ]


def predict_probs(
  model, variables, images_uint8: jax.Array, data_config, tta: bool, rotations: bool = False
) -> jax.Array:
  """Softmax probabilities (B, H, W, C) float32; with `tta`, averaged over the views of
  `tta_views(rotations)`: the four flips, or the eight symmetries of the square.

  The views run as one batch of 4B (8B) through the model, not four (eight) passes: one launch
  of each layer with more work, which a GPU fills better (at eval BatchNorm uses its running
  statistics, so the images of a batch do not interact).
  """
  images = normalize.model_inputs(images_uint8, data_config)

  def probs(x):
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)

  if not tta:
    return probs(images)
  views = tta_views(rotations)
  batch = images.shape[0]
  viewed = probs(jnp.concatenate([view(images) for view, _ in views]))
  total = viewed[:batch]
  for i, (_, undo) in enumerate(views[1:], start=1):  # summed in the order of separate passes
    total = total + undo(viewed[i * batch : (i + 1) * batch])
  return total / len(views)
