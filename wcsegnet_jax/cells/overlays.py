"""Overlays a haematologist can read, and a contact sheet of a whole predict run.

An overlay leaves the stain as it is and draws on it: each cell's outline in its type's colour
(`classes.ClassTable.colors`, on a dark rim so it shows on any stain), and beside it the cell's
number as in cells.csv, its type and confidence; a cell the differential does not count is
outlined in white and marked "not counted". A legend band below the image names the colours.
Small crops are enlarged first (nearest neighbour, whole pixels) so the writing is legible; a
field is drawn at its own size. The contact sheet tiles every image's overlay, small and
captioned with its file name, for a first review of a run.
"""

import dataclasses
import math
import pathlib
from typing import Sequence

import cv2
import numpy as np

from wcsegnet_jax.core import classes

FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_DRAWN_SIDE = 480  # crops are enlarged to at least this many pixels on their longer side
NOT_COUNTED_COLOR = (255, 255, 255)
RIM_COLOR = (0, 0, 0)
BAND_COLOR = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
SHEET_TILE = 220  # pixels per contact-sheet image (longer side)
SHEET_COLUMNS = 6


@dataclasses.dataclass(frozen=True)
class DrawnCell:
  """What the overlay writes beside a cell: its cells.csv number, type and confidence."""

  number: int
  class_id: int
  type_name: str
  confidence: float
  counted: bool


def _scale_for(shape: tuple[int, ...]) -> int:
  """The whole-number enlargement that brings a crop's longer side to MIN_DRAWN_SIDE."""
  return max(1, math.ceil(MIN_DRAWN_SIDE / max(shape[:2])))


def _text_size(width: int) -> tuple[float, int]:
  """(font scale, stroke) for a canvas `width` pixels wide: text ~1/40 of it high."""
  scale = max(0.5, width / 800)
  return scale, max(1, round(scale * 1.5))


def _put_label(
  canvas: np.ndarray, text: str, origin: tuple[int, int], color, scale: float, stroke: int
) -> None:
  """Black text on a white box edged in the cell's colour: legible on any stain."""
  (width, height), base = cv2.getTextSize(text, FONT, scale, stroke)
  x, y = origin
  cv2.rectangle(canvas, (x - 3, y - height - 3), (x + width + 3, y + base), BAND_COLOR, -1)
  cv2.rectangle(canvas, (x - 3, y - height - 3), (x + width + 3, y + base), color, 2)
  cv2.putText(canvas, text, (x, y), FONT, scale, TEXT_COLOR, stroke, cv2.LINE_AA)


def draw_cells(
  image: np.ndarray, labels: np.ndarray, drawn: Sequence[DrawnCell], table: classes.ClassTable
) -> np.ndarray:
  """The image (RGB uint8), enlarged if small, with each cell of `labels` (1..n, as
  `cells.find_cells` gives them, `drawn[k - 1]` for label k) outlined and labelled, and a
  legend band below."""
  factor = _scale_for(image.shape)
  canvas = np.ascontiguousarray(np.repeat(np.repeat(image, factor, 0), factor, 1))
  font_scale, stroke = _text_size(canvas.shape[1])
  line = max(2, round(max(canvas.shape[:2]) / 300))
  for k, cell in enumerate(drawn, start=1):
    mask = np.repeat(np.repeat((labels == k).astype(np.uint8), factor, 0), factor, 1)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    color = _cell_color(cell, table)
    cv2.drawContours(canvas, contours, -1, RIM_COLOR, line + 2, cv2.LINE_AA)
    cv2.drawContours(canvas, contours, -1, color, line, cv2.LINE_AA)
    text = f'{cell.number} {cell.type_name} {cell.confidence:.2f}' + (
      '' if cell.counted else ' (not counted)'
    )
    _put_label(
      canvas,
      text,
      _label_origin(mask, text, font_scale, stroke, canvas.shape),
      color,
      font_scale,
      stroke,
    )
  return np.concatenate([canvas, legend_band(table, canvas.shape[1])])


def _cell_color(cell: DrawnCell, table: classes.ClassTable) -> tuple[int, int, int]:
  if not cell.counted:
    return NOT_COUNTED_COLOR
  return tuple(int(c) for c in table.colors[cell.class_id])


def without_legend(overlay: np.ndarray, table: classes.ClassTable) -> np.ndarray:
  """An overlay `draw_cells` drew, without its legend band."""
  return overlay[: overlay.shape[0] - legend_band(table, overlay.shape[1]).shape[0]]


def _label_origin(
  mask: np.ndarray, text: str, scale: float, stroke: int, shape: tuple[int, ...]
) -> tuple[int, int]:
  """Where a cell's text goes: just above its outline, moved inside the canvas."""
  ys, xs = np.nonzero(mask)
  (width, height), _ = cv2.getTextSize(text, FONT, scale, stroke)
  x = int(np.clip(xs.min(), 5, max(5, shape[1] - width - 5)))
  y = int(ys.min()) - 10
  if y - height < 5:  # no room above: below the cell, or inside at the bottom
    y = min(int(ys.max()) + height + 10, shape[0] - 8)
  return x, y


def legend_band(table: classes.ClassTable, width: int, scale: float | None = None) -> np.ndarray:
  """A white band, `width` wide, naming each cell type's outline colour and the white outline
  of the cells not counted, in as many rows as it takes; text as in `draw_cells` unless a
  font `scale` is given."""
  scale, stroke = _text_size(width) if scale is None else (scale, 1)
  entries = [
    (name, tuple(int(c) for c in table.colors[i]))
    for i, name in zip(table.nucleus_ids, table.cell_types)
  ]
  entries.append(('not counted', NOT_COUNTED_COLOR))
  (_, height), _ = cv2.getTextSize('Ag', FONT, scale, stroke)
  row_height, swatch = height * 2, height + 4
  rows, x, placed = 1, 8, []
  for name, color in entries:
    (text_width, _), _ = cv2.getTextSize(name, FONT, scale, stroke)
    item = swatch + 6 + text_width + 16
    if x + item > width and x > 8:
      rows, x = rows + 1, 8
    placed.append((name, color, x, rows - 1))
    x += item
  band = np.full((rows * row_height + height // 2, width, 3), BAND_COLOR, np.uint8)
  for name, color, x, row in placed:
    top = row * row_height + (row_height - swatch) // 2
    cv2.rectangle(band, (x, top), (x + swatch, top + swatch), color, -1)
    cv2.rectangle(band, (x, top), (x + swatch, top + swatch), RIM_COLOR, 1)
    cv2.putText(
      band, name, (x + swatch + 6, top + swatch - 2), FONT, scale, TEXT_COLOR, stroke, cv2.LINE_AA
    )
  return band


def thumbnail(image: np.ndarray, tile: int = SHEET_TILE) -> np.ndarray:
  """The image shrunk (area averaging) to fit `tile` pixels on its longer side."""
  f = min(1.0, tile / max(image.shape[:2]))
  size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
  return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def contact_sheet(
  tiles: Sequence[tuple[str, np.ndarray]],
  table: classes.ClassTable,
  tile: int = SHEET_TILE,
  columns: int = SHEET_COLUMNS,
) -> np.ndarray:
  """One RGB image of the (caption, `thumbnail`) pairs given, each captioned, `columns` to a
  row, and the legend below."""
  caption_height = 18
  columns = max(1, min(columns, len(tiles)))
  rows = math.ceil(len(tiles) / columns)
  cell_h = tile + caption_height + 6
  sheet = np.full((rows * cell_h, columns * (tile + 6), 3), BAND_COLOR, np.uint8)
  for i, (caption, small) in enumerate(tiles):
    top, left = (i // columns) * cell_h + 3, (i % columns) * (tile + 6) + 3
    sheet[top : top + small.shape[0], left : left + small.shape[1]] = small
    text = caption if len(caption) <= 30 else caption[:27] + '...'
    cv2.putText(
      sheet, text, (left, top + tile + caption_height - 4), FONT, 0.45, TEXT_COLOR, 1, cv2.LINE_AA
    )
  return np.concatenate([sheet, legend_band(table, sheet.shape[1], scale=0.6)])


def read_rgb(path: pathlib.Path) -> np.ndarray:
  """A PNG this module wrote, as RGB."""
  return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
