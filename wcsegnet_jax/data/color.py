"""The colour step: each image's stain colours standardised before the model sees it.

Labs differ in stain, lamp and camera far more than cells of one type differ in colour; a model
trained on one lab's colours misses another lab's nuclei. Each step maps every image, from any
lab, into one colour range (`data.color`):
- 'reinhard' (Reinhard et al., "Color transfer between images", IEEE CG&A 2001): each image's
  CIELAB channel means and standard deviations moved to `data.color_reference`. They are
  measured on the whole image, so a crop that its cell fills is moved by the cell as much as by
  the stain.
- 'two_point': each CIELAB channel mapped by the line that takes two anchors of the image to
  `data.color_anchors`: its brightest 30% of pixels (the plasma between cells) and its darkest
  3% (a white cell's nucleus, where the image shows one). Both are what the stain and lamp make
  of the same things in any smear, whatever share of the image the cell fills (the shipped
  `differential` model's step; docs/changelog.md has the comparison).
It acts on each image as read, whole (a crop, or a whole field before it is cut into tiles), in
training data preparation, evaluation and predict alike: the one function below, called from
`label_maps.load_example` and predict (export/onnx_export.py holds its graph form).
"""

from typing import Callable

import cv2
import ml_collections
import numpy as np

from wcsegnet_jax.core import config_keys

COLOR_STEPS = config_keys.CHOICES['data.color']
# Floor of a channel's std (CIELAB units): a flat image is shifted, never blown up.
MIN_STD = 1.0


def to_lab(image: np.ndarray) -> np.ndarray:
  """(H, W, 3) float32 CIELAB (L 0-100) of a uint8 RGB image."""
  return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _to_rgb(lab: np.ndarray) -> np.ndarray:
  """uint8 RGB of a CIELAB image, clipped to the gamut."""
  rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
  return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def lab_statistics(image: np.ndarray) -> np.ndarray:
  """(6,) float64: the mean and the std of the L, a, b channels of an (H, W, 3) uint8 RGB image."""
  lab = to_lab(image).reshape(-1, 3)
  return np.concatenate([lab.mean(0), lab.std(0)]).astype(np.float64)


def reinhard(image: np.ndarray, reference) -> np.ndarray:
  """`image` (uint8 RGB) with each CIELAB channel's mean and std moved to `reference`'s
  (L, a, b means, then L, a, b stds); uint8 RGB, clipped to the gamut."""
  reference = np.asarray(reference, np.float32)
  lab = to_lab(image)
  flat = lab.reshape(-1, 3)
  mean, std = flat.mean(0), np.maximum(flat.std(0), MIN_STD)
  return _to_rgb((lab - mean) * (reference[3:] / std) + reference[:3])


# two_point's anchors: the brightest and the darkest shares of an image's pixels, by L.
BACKGROUND_SHARE = 0.30
NUCLEUS_SHARE = 0.03
# The factor stretching a channel is kept in this range, and is 1 where the anchors' order in
# that channel is not the reference's; it ramps in from 1 over anchors MIN_SPAN to 3 * MIN_SPAN
# apart, so a near-flat channel is not stretched by a hair's difference.
STRETCH_RANGE = (0.5, 3.0)
MIN_SPAN = 1.0  # CIELAB units
# Whether the dark anchor is a nucleus: a Romanowsky-stained nucleus is far bluer (lower b) than
# the plasma, a red cell hardly. The share of the reference's b span the image's spans decides:
# no stretch below the first, the full stretch above the second, a ramp between. Without it, a
# view without a white cell stretched its red cells towards nucleus colours, and the model took
# some for lymphocytes (bccd_fields' cell-free strips: b spans 0.00-0.40 of the reference's,
# their white cells' fields 0.37-1.05, the WBC Image Dataset's 0.54-1.42; docs/changelog.md).
NUCLEUS_B_SHARE = (0.1, 0.3)


def anchor_ranks(num_pixels: int) -> tuple[int, int]:
  """(rank of the brightest share's lowest L, rank of the darkest share's highest L) among
  `num_pixels` L values sorted ascending; shared with the graph form, so both pick alike."""
  bright = min(num_pixels - 1, int(num_pixels * (1.0 - BACKGROUND_SHARE)))
  dark = max(0, int(np.ceil(num_pixels * NUCLEUS_SHARE)) - 1)
  return bright, dark


def stretch(span, reference_span, xp=np):
  """two_point's per-channel factors (..., 3) from the anchors' spans (..., 3), dark minus
  bright: reference_span / span clipped to STRETCH_RANGE, eased to 1 for a near-flat channel,
  a channel the other way round, and an image whose dark anchor is no nucleus. `xp` is numpy,
  or jax.numpy in the graph form."""
  magnitude = abs(span)
  ratio = reference_span / xp.where(magnitude > 0, span, 1.0)
  full = xp.where(ratio > 0, xp.clip(ratio, *STRETCH_RANGE), 1.0)
  flat_weight = xp.clip((magnitude - MIN_SPAN) / (2 * MIN_SPAN), 0.0, 1.0)
  low, high = NUCLEUS_B_SHARE
  blue_share = span[..., 2:3] / reference_span[2]
  nucleus_weight = xp.clip((blue_share - low) / (high - low), 0.0, 1.0)
  return 1.0 + (full - 1.0) * flat_weight * nucleus_weight


def two_point_anchors(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(the mean CIELAB of the image's brightest BACKGROUND_SHARE pixels, that of its darkest
  NUCLEUS_SHARE) of an (H, W, 3) CIELAB image (`to_lab`)."""
  lab = lab.reshape(-1, 3)
  order = np.sort(lab[:, 0])
  bright_rank, dark_rank = anchor_ranks(len(order))
  bright = lab[lab[:, 0] >= order[bright_rank]].mean(0)
  dark = lab[lab[:, 0] <= order[dark_rank]].mean(0)
  return bright, dark


def two_point(image: np.ndarray, reference) -> np.ndarray:
  """`image` (uint8 RGB) with each CIELAB channel mapped so that its background anchor goes to
  reference[:3] and its nucleus anchor to reference[3:] (`two_point_anchors`); uint8 RGB."""
  reference = np.asarray(reference, np.float32)
  lab = to_lab(image)
  bright, dark = two_point_anchors(lab)
  factor = stretch((dark - bright).astype(np.float32), reference[3:] - reference[:3])
  return _to_rgb((lab - bright) * factor + reference[:3])


_STEPS = {'reinhard': reinhard, 'two_point': two_point}


def color_step(name: str, reference=()) -> Callable[[np.ndarray], np.ndarray]:
  """The colour step `name` ('none', or 'reinhard' or 'two_point' to `reference`): uint8 RGB
  -> uint8 RGB."""
  if name == 'none':
    return lambda image: image
  if name not in _STEPS:
    raise ValueError(f'unknown colour step {name!r}; expected one of {COLOR_STEPS}')
  step, reference = _STEPS[name], tuple(float(v) for v in reference)
  return lambda image: step(image, reference)


def reference_of(data_config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The numbers a data config's colour step maps to: `data.color_anchors` for two_point, else
  `data.color_reference`."""
  key = 'color_anchors' if data_config.get('color', 'none') == 'two_point' else 'color_reference'
  return tuple(float(v) for v in data_config.get(key, ()))


def step_of(data_config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """The colour step a data config names (`data.color`, its numbers by `reference_of`)."""
  return color_step(data_config.get('color', 'none'), reference_of(data_config))


def standardize(image: np.ndarray, data_config: ml_collections.ConfigDict) -> np.ndarray:
  """The colour step of `data_config` on one uint8 RGB image (unchanged for 'none')."""
  return step_of(data_config)(image)
