"""`--field_scale=auto`: a field's scale to the training crops' magnification, from its nuclei.

A white cell's nucleus is the ruler: at the training scale (the Jiangxi crops, 120x120, and the
CellaVision crops resized to it) the WBC Image Dataset's nuclei have a median equivalent diameter
of 45 px (10th-90th percentile 32-56 px over 320 masks; lymphocytes smaller, neutrophils' lobes
larger). The model itself finds the nuclei, as Cellpose estimates a diameter from a first pass: the
field is segmented at a first guess (the whole image in one tile), then again at the scale that
brings the largest nucleus found (a white cell's; false finds are platelet-sized) to 45 px, at most
2x per pass, until two passes agree within 10%. A guess too small to show any nucleus grows 1.5x
per pass. The model finds nuclei within its training zoom (`configs/cpu.py`: 0.87-1.43x), so a
guess within that range converges in one or two passes. The estimate is equivariant (a field
enlarged 2x gets half the scale) and only as exact as one cell's type allows: a lymphocyte-only
field reads up to ~1.3x too large a scale.
"""

import math
from typing import Callable

import numpy as np

from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.model import decoding

REFERENCE_NUCLEUS_DIAMETER_PX = 45.0
AGREEMENT = 1.10  # two passes within this factor end the search
GROWTH = 1.5  # a pass with no nucleus tries a scale this much larger
MAX_STEP = 2.0
MAX_PASSES = 8
MAX_SCALE = 4.0
FALLBACK_SCALE = 1.0


def ruler_diameter(found: list[cells.Cell]) -> float:
  """The equivalent diameter (px) of the largest nucleus: a white cell's, where false finds
  (platelets, specks, red-cell rims) are smaller. A nucleus cut by the border still counts:
  a field's one white cell is often cut, and its part is a better ruler than the specks."""
  return math.sqrt(4 * max(c.nucleus_area_px for c in found) / math.pi)


def estimate_scale(segment, image: np.ndarray, decode: str = 'by_part') -> float | None:
  """The factor taking `image` to the training scale, or None when no pass finds a nucleus
  (after MAX_PASSES that never agree, the last pass's measurement).

  segment: a `segmenter.Segmenter` (its colour step is applied once, here; its passes run
  without test-time augmentation, a quarter of the work).
  """
  segment = segment.without_tta()
  table = classes.table_of(segment.config.data)
  standardized = segment.standardize(image)
  scale = min(MAX_SCALE, segment.size / max(image.shape[:2]))
  better = None
  for _ in range(MAX_PASSES):
    probs = segment.field(standardized, scale, standardized=True)
    found, _ = cells.find_cells(
      decoding.decode(probs, table, decode), probs, table, cells.CellRules()
    )
    if not found:
      scale *= GROWTH
      if scale > MAX_SCALE:
        return None
      continue
    better = scale * REFERENCE_NUCLEUS_DIAMETER_PX / ruler_diameter(found)
    if max(better / scale, scale / better) <= AGREEMENT:
      return better
    # At most 2x per pass: a first view far off the training zoom measures its nuclei poorly.
    scale = min(max(better, scale / MAX_STEP), scale * MAX_STEP, MAX_SCALE)
  return better  # passes that never agreed: the last measurement


def scale_function(
  spec: str | float | None, segment, warn: Callable[[str], None] = print
) -> Callable[[np.ndarray], float]:
  """image -> scale: a fixed `spec` (a positive number), or 'auto' (`estimate_scale`, with
  FALLBACK_SCALE and a warning through `warn` where no estimate is possible)."""
  if str(spec).strip().lower() != 'auto':
    fixed = float(spec)
    return lambda image: fixed

  def auto(image: np.ndarray) -> float:
    scale = estimate_scale(segment, image, segment.config.eval.decode)
    if scale is None:
      warn(
        f'no nucleus found at any scale up to {MAX_SCALE}: the scale cannot be estimated; '
        f'using {FALLBACK_SCALE}'
      )
      return FALLBACK_SCALE
    return scale

  return auto
