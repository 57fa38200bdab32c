"""Masks to label maps: gray 0/128/255 masks (or label maps of class ids) checked and turned into
the label map of the configured classes, resized with their images into one example.
"""

import pathlib

from absl import logging
import cv2
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data.records import RawRecord

DataError = errors.DataError


MASK_LEVELS = np.array([0, 128, 255], np.int16)  # background, cytoplasm, nucleus


NUCLEUS_LEVEL = 255


CYTOPLASM_LEVEL = 128


def snap_mask_levels(
  mask: np.ndarray, path: pathlib.Path, tolerance: int, max_off_level_fraction: float
) -> np.ndarray:
  """Snaps gray levels to the nearest of 0/128/255; a mask that does not fit that is an error.

  Some of the dataset's masks carry a few stray gray levels (anti-aliasing, JPEG history); a mask
  whose pixels are mostly far from every level follows another scheme and would give silently
  wrong labels. The few far ones that are snapped are logged, one line per file.
  """
  distance = np.abs(mask[..., None].astype(np.int16) - MASK_LEVELS)
  nearest = distance.argmin(-1)
  n_off = int((distance.min(-1) > tolerance).sum())
  off = n_off / mask.size
  if off > max_off_level_fraction:
    raise DataError(
      f'{path}: {off:.1%} of the mask is farther than {tolerance} from the levels '
      f'0/128/255 (background/cytoplasm/nucleus); is this a mask of another scheme?'
    )
  if n_off:
    logging.warning(
      '%s: snapped %d mask pixels (%.2f%%) farther than %d from 0/128/255 to the nearest level',
      path,
      n_off,
      100 * off,
      tolerance,
    )
  return MASK_LEVELS[nearest].astype(np.uint8)


def _no_nucleus_message(mask: np.ndarray, path: pathlib.Path) -> str:
  """Why a 0/128/255 mask has no nucleus, with a hint for the usual export mistakes."""
  values = np.unique(mask)
  text = (
    f'{path}: no nucleus pixel in the mask (values {values[:10].tolist()}); expected '
    f'levels 0 background, 128 cytoplasm, {NUCLEUS_LEVEL} nucleus'
  )
  if values.tolist() == [0]:
    return text + ' (this mask is all background)'
  if set(values.tolist()) <= {0, 1}:
    return text + f' (it looks like a 0/1 mask: save the nucleus as {NUCLEUS_LEVEL})'
  if values.max() < len(classes.PALETTE):  # small values: class ids, not gray levels
    return text + (
      ' (it looks like a label map of class ids: a folder dataset reads masks as '
      'class ids when it has no labels.csv)'
    )
  return text


def label_map_from_mask(
  mask: np.ndarray,
  record: RawRecord,
  table: classes.ClassTable,
  tolerance: int,
  max_off_level_fraction: float,
) -> np.ndarray:
  """The uint8 label map of `table`: nucleus pixels take the cell's class id, cytoplasm pixels
  the cytoplasm's when `table.cytoplasm` (else background), the rest is background.

  A mask without a nucleus pixel is an error: it would teach the model that the cell has none;
  likewise one without cytoplasm when the table has it.
  """
  class_id = table.type_id(record.cell_type)
  if record.mask_is_label_map:  # checked when listed: 0, `class_id` and the cytoplasm's id
    return mask.astype(np.uint8)
  snapped = snap_mask_levels(mask, record.mask_path, tolerance, max_off_level_fraction)
  if not (snapped == NUCLEUS_LEVEL).any():
    raise DataError(_no_nucleus_message(mask, record.mask_path))
  label_map = np.where(snapped == NUCLEUS_LEVEL, class_id, classes.BACKGROUND)
  if table.cytoplasm:
    if not (snapped == CYTOPLASM_LEVEL).any():
      raise DataError(
        f'{record.mask_path}: no cytoplasm pixel ({CYTOPLASM_LEVEL} gray) in the '
        f'mask (values {np.unique(mask)[:10].tolist()}) but '
        f'config.data.cytoplasm=True; mark the cytoplasm {CYTOPLASM_LEVEL}, or '
        f'set data.cytoplasm=False'
      )
    label_map = np.where(snapped == CYTOPLASM_LEVEL, table.cytoplasm_id, label_map)
  return label_map.astype(np.uint8)


def resize_label_map(label_map: np.ndarray, size: int) -> np.ndarray:
  """To size x size, each pixel taking the class that covers most of it (no new labels).

  Each class's indicator is resized as `resize_image` resizes images and the largest wins (ties
  to the lower id). cv2's INTER_NEAREST, used before, samples source pixel floor(x * scale),
  one source pixel up-left of the pixel's centre on average at 300 -> 120: the label maps sat
  0.4 px off their images (CellaVision's nucleus Dice of those labels against these: 0.977).
  """
  h, w = label_map.shape
  if (h, w) == (size, size):
    return label_map
  ids = np.unique(label_map)
  interpolation = image_files._interpolation(h, w, size)
  cover = np.stack(
    [
      cv2.resize((label_map == i).astype(np.float32), (size, size), interpolation=interpolation)
      for i in ids
    ],
    axis=-1,
  )
  return ids[np.argmax(cover, axis=-1)].astype(label_map.dtype)


def resize_pair(image: np.ndarray, label_map: np.ndarray, size: int):
  """The image as `resize_image`, the label map as `resize_label_map`."""
  return image_files.resize_image(image, size), resize_label_map(label_map, size)


def load_example(
  record: RawRecord,
  table: classes.ClassTable,
  image_size: int,
  tolerance: int,
  max_off_level_fraction: float,
  color_step=None,
) -> dict[str, np.ndarray | str | int]:
  """Reads, checks and resizes one record into an example of `table`'s classes (before the
  TFDS encoding); `color_step` (`color.step_of`) acts on the image as read, before resizing."""
  image = image_files.read_rgb(record.image_path)
  image = image if color_step is None else color_step(image)
  mask = image_files.read_mask(record.mask_path, label_map=record.mask_is_label_map)
  if image.shape[:2] != mask.shape:
    raise DataError(
      f'{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image '
      f'{record.image_path.name} is {image.shape[1]}x{image.shape[0]}'
    )
  label_map = label_map_from_mask(mask, record, table, tolerance, max_off_level_fraction)
  image, resized = resize_pair(image, label_map, image_size)
  class_id = table.type_id(record.cell_type)
  if not (resized == class_id).any():  # a few pixels that shrinking drops
    raise DataError(
      f'{record.mask_path}: its nucleus ({int((label_map == class_id).sum())} '
      f'pixels) '
      f'vanishes when the {mask.shape[1]}x{mask.shape[0]} image is resized to '
      f'{image_size}x{image_size} (data.image_size)'
    )
  return {'image': image, 'label_map': resized, 'cell_type': class_id, 'file_id': record.file_id}
