"""A trained model as a function from images to class probabilities: crops whole, fields in tiles.

The colour step (`color.standardize`) acts first on each image as read, whole, as it did on the
training images; then a crop is resized to the training size, a field resized by its scale and
cut into tiles (`fields.segment_field`). predict, the cross-lab scoring and the scale estimate
share this one path, so they see what the model saw in training.
"""

from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from wcsegnet_jax.data import color
from wcsegnet_jax.data import image_files
from wcsegnet_jax.inference import fields
from wcsegnet_jax.model import models
from wcsegnet_jax.model import probabilities


class Segmenter:
  """Class probabilities of a model (config + variables) for crops and fields, float32 numpy."""

  def __init__(
    self, config: ml_collections.ConfigDict, variables: dict, tta: bool, batch_size: int = 16
  ):
    self.config = config
    self.size = int(config.data.image_size)
    self.batch_size = int(batch_size)
    self.tta = bool(tta)
    self._variables = variables
    self._plain = None
    model = models.model_for(config)
    # One compile: every call sees a (batch_size, size, size, 3) uint8 batch.
    jitted = jax.jit(
      lambda v, x: probabilities.predict_probs(
        model, v, x, config.data, tta, config.eval.tta_rotations
      )
    )
    self._tiles = lambda x: np.asarray(jax.device_get(jitted(variables, x)), np.float32)

  def without_tta(self) -> 'Segmenter':
    """The same model without test-time augmentation (a quick first look), built once."""
    if not self.tta:
      return self
    if self._plain is None:
      self._plain = Segmenter(self.config, self._variables, False, self.batch_size)
    return self._plain

  def standardize(self, image: np.ndarray) -> np.ndarray:
    """The image as the model's colour step leaves it."""
    return color.standardize(image, self.config.data)

  def crops(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(size, size, C) probabilities of each image taken as one cell crop, resized whole."""
    out = []
    for first in range(0, len(images), self.batch_size):
      chunk = images[first : first + self.batch_size]
      batch = np.zeros((self.batch_size, self.size, self.size, 3), np.uint8)
      for i, image in enumerate(chunk):
        batch[i] = image_files.resize_image(self.standardize(image), self.size)
      out += list(self._tiles(batch)[: len(chunk)])
    return out

  def field(
    self,
    image: np.ndarray,
    scale: float,
    standardized: bool = False,
    tiles_done: Callable[[int, int], None] | None = None,
  ) -> np.ndarray:
    """(round(H * scale), round(W * scale), C) probabilities of a field resized by `scale`, in
    overlapping tiles; `standardized` when the colour step was already applied; `tiles_done`
    as `fields.segment_field`'s."""
    image = image if standardized else self.standardize(image)
    return fields.segment_field(
      self._tiles,
      fields.resize_field(image, scale),
      self.size,
      batch_size=self.batch_size,
      tiles_done=tiles_done,
    )
