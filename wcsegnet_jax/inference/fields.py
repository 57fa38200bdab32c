"""Segmenting a field (an image holding many cells) at the training scale, in overlapping tiles.

A field is never squashed whole to the training size: it is resized by a scale factor (so its
cells come out as large as the training crops' were), cut into overlapping tiles of the training
size, and the tiles' class probabilities are stitched back. Each output pixel comes from the one
tile in which it lies farthest from the tile's edge (the boundary between two neighbours is the
middle of their overlap), so every pixel keeps at least `margin` pixels of context on each side
that has image: a model whose receptive field reaches no farther gives exactly the whole-image
result. Fixed-size tiles also mean one compiled program and bounded memory for any field size.
"""

from typing import Callable

import cv2
import numpy as np

# Tiles overlap by twice this fraction of the tile size: 1/4 of 120 = 30 px of context.
DEFAULT_MARGIN_FRACTION = 0.25


def tile_plan(length: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
  """(start, own_from, own_to) per tile along one axis of `length` >= `tile` pixels: the tile
  covers [start, start + tile) and supplies the output pixels [own_from, own_to)."""
  if length < tile:
    raise ValueError(f'length {length} is shorter than the tile {tile}')
  if not 0 <= 2 * margin < tile:
    raise ValueError(f'margin {margin} must be >= 0 and less than half the tile {tile}')
  stride = tile - 2 * margin
  starts = list(range(0, length - tile, stride)) + [length - tile]
  starts = sorted(set(starts))
  plan = []
  for k, start in enumerate(starts):
    own_from = 0 if k == 0 else plan[-1][2]
    own_to = length if k == len(starts) - 1 else (start + tile + starts[k + 1]) // 2
    plan.append((start, own_from, own_to))
  return plan


def resize_field(image: np.ndarray, scale: float) -> np.ndarray:
  """The image resized by `scale` (area averaging when shrinking, bilinear when enlarging)."""
  if scale == 1.0:
    return image
  height, width = image.shape[:2]
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def segment_field(
  predict_tiles: Callable[[np.ndarray], np.ndarray],
  image: np.ndarray,
  tile: int,
  margin: int | None = None,
  batch_size: int = 16,
  tiles_done: Callable[[int, int], None] | None = None,
) -> np.ndarray:
  """Class probabilities (H, W, C) of an (H, W, 3) image of any size, from overlapping tiles.

  predict_tiles: (batch_size, tile, tile, 3) uint8 -> (batch_size, tile, tile, C) probabilities
  (always called with a full batch, so a jitted function compiles once). An image smaller than
  a tile is mirrored out to the tile size, as the model pads its input, and cropped back.
  """
  margin = int(tile * DEFAULT_MARGIN_FRACTION) if margin is None else margin
  height, width = image.shape[:2]
  pad_h, pad_w = max(0, tile - height), max(0, tile - width)
  padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode='symmetric')
  rows = tile_plan(padded.shape[0], tile, margin)
  cols = tile_plan(padded.shape[1], tile, margin)
  places = [(r, c) for r in rows for c in cols]
  out = None
  for first in range(0, len(places), batch_size):
    chunk = places[first : first + batch_size]
    batch = np.zeros((batch_size, tile, tile, 3), np.uint8)
    for i, ((y, _, _), (x, _, _)) in enumerate(chunk):
      batch[i] = padded[y : y + tile, x : x + tile]
    probs = np.asarray(predict_tiles(batch), np.float32)
    if out is None:
      out = np.zeros(padded.shape[:2] + probs.shape[-1:], np.float32)
    for i, ((y, y0, y1), (x, x0, x1)) in enumerate(chunk):
      out[y0:y1, x0:x1] = probs[i, y0 - y : y1 - y, x0 - x : x1 - x]
    if tiles_done is not None:
      tiles_done(first + len(chunk), len(places))
  return out[:height, :width]
