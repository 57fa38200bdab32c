"""The colour step: each image's stain colours standardised before the model sees it.

Labs differ in stain, lamp and camera far more than cells of one type differ in colour; a model
trained on one lab's colours misses another lab's nuclei. `data.color` 'reinhard' (Reinhard et
al., "Color transfer between images", IEEE CG&A 2001) moves each image's CIELAB channels to the
mean and standard deviation of `data.color_reference`, so every image, from any lab, reaches the
model in one colour range. It acts on each image as read, whole (a crop, or a whole field before
it is cut into tiles), in training data preparation, evaluation and predict alike: the one
function below, called from `label_maps.load_example` and predict.
"""

from typing import Callable

import cv2
import ml_collections
import numpy as np

from wcsegnet_jax.core import config_keys

COLOR_STEPS = config_keys.CHOICES['data.color']
# Floor of a channel's std (CIELAB units): a flat image is shifted, never blown up.
MIN_STD = 1.0


def lab_statistics(image: np.ndarray) -> np.ndarray:
  """(6,) float64: the mean and the std of the L, a, b channels of an (H, W, 3) uint8 RGB image."""
  lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
  return np.concatenate([lab.mean(0), lab.std(0)]).astype(np.float64)


def reinhard(image: np.ndarray, reference) -> np.ndarray:
  """`image` (uint8 RGB) with each CIELAB channel's mean and std moved to `reference`'s
  (L, a, b means, then L, a, b stds); uint8 RGB, clipped to the gamut."""
  reference = np.asarray(reference, np.float32)
  lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
  flat = lab.reshape(-1, 3)
  mean, std = flat.mean(0), np.maximum(flat.std(0), MIN_STD)
  lab = (lab - mean) * (reference[3:] / std) + reference[:3]
  rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
  return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def color_step(name: str, reference=()) -> Callable[[np.ndarray], np.ndarray]:
  """The colour step `name` ('none' or 'reinhard' to `reference`): uint8 RGB -> uint8 RGB."""
  if name == 'none':
    return lambda image: image
  if name == 'reinhard':
    reference = tuple(float(v) for v in reference)
    return lambda image: reinhard(image, reference)
  raise ValueError(f'unknown colour step {name!r}; expected one of {COLOR_STEPS}')


def step_of(data_config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """The colour step a data config names (`data.color`, `data.color_reference`)."""
  return color_step(data_config.get('color', 'none'), data_config.get('color_reference', ()))


def standardize(image: np.ndarray, data_config: ml_collections.ConfigDict) -> np.ndarray:
  """The colour step of `data_config` on one uint8 RGB image (unchanged for 'none')."""
  return step_of(data_config)(image)
