"""Tests of wcsegnet_jax.overlays: outlines on the untouched stain, numbers, legend, sheet."""

import cv2
import numpy as np

from wcsegnet_jax.cells import overlays
from wcsegnet_jax.core import classes

TABLE = classes.class_table(classes.DEFAULT_CELL_TYPES, cytoplasm=False)


def _crop():
  """A 60x60 stain-coloured crop holding one lymphocyte nucleus (label 1) of radius 14."""
  image = np.full((60, 60, 3), (225, 190, 200), np.uint8)
  labels = np.zeros((60, 60), np.int32)
  cv2.circle(labels, (30, 34), 14, 1, thickness=-1)
  image[labels == 1] = (110, 50, 150)
  return image, labels


def test_a_cell_is_outlined_in_its_colour_numbered_and_its_inside_left_as_it_was():
  image, labels = _crop()
  lymphocyte = TABLE.type_id('lymphocyte')
  drawn = overlays.draw_cells(
    image, labels, [overlays.DrawnCell(1, lymphocyte, 'lymphocyte', 0.97, True)], TABLE
  )
  factor = overlays.MIN_DRAWN_SIDE // 60  # a 60-pixel crop is drawn 8 times larger
  side = 60 * factor
  canvas, band = drawn[:side], drawn[side:]
  assert canvas.shape == (side, side, 3) and band.shape[1] == side and len(band) > 10
  big_labels = np.repeat(np.repeat(labels, factor, 0), factor, 1).astype(np.uint8)
  # The outline: pixels of the class colour along the nucleus's edge.
  edge = cv2.morphologyEx(big_labels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
  colour = TABLE.colors[lymphocyte]
  assert (canvas[edge] == colour).all(-1).mean() > 0.5
  # Inside, away from the outline, the stain is untouched: no tint.
  inside = cv2.erode(big_labels, np.ones((25, 25), np.uint8)) > 0
  assert inside.sum() > 1000
  np.testing.assert_array_equal(canvas[inside], np.broadcast_to((110, 50, 150), (inside.sum(), 3)))
  # The label, above the cell: black text on a white box edged in the cell's colour.
  above = canvas[: big_labels.nonzero()[0].min()]
  assert (above == 0).all(-1).sum() > 50 and (above == 255).all(-1).sum() > 200
  assert (above == colour).all(-1).sum() > 50
  # The legend names every type with a swatch of its colour, and the uncounted white.
  for class_id in TABLE.nucleus_ids:
    assert (band == TABLE.colors[class_id]).all(-1).sum() > 20, TABLE.names[class_id]


def test_a_cell_not_counted_is_outlined_in_white_not_its_type_colour():
  image, labels = _crop()
  neutrophil = TABLE.type_id('neutrophil')
  drawn = overlays.draw_cells(
    image, labels, [overlays.DrawnCell(1, neutrophil, 'neutrophil', 0.5, False)], TABLE
  )
  side = overlays.MIN_DRAWN_SIDE // 60 * 60
  canvas = drawn[:side]
  assert not (canvas == TABLE.colors[neutrophil]).all(-1).any()
  assert (canvas == overlays.NOT_COUNTED_COLOR).all(-1).sum() > 300


def test_contact_sheet_tiles_every_image_with_its_caption_and_the_legend():
  image, labels = _crop()
  drawn = overlays.draw_cells(
    image, labels, [overlays.DrawnCell(1, 3, 'lymphocyte', 0.9, True)], TABLE
  )
  assert overlays.without_legend(drawn, TABLE).shape[0] == drawn.shape[1]  # square again
  tiles = [
    (f'crop{i}', overlays.thumbnail(overlays.without_legend(drawn, TABLE), 100)) for i in range(8)
  ]
  sheet = overlays.contact_sheet(tiles, TABLE, tile=100, columns=3)
  assert sheet.shape[1] == 3 * 106
  assert sheet.shape[0] > 3 * 100  # three rows of tiles, captions and the legend
  for i in range(8):  # each tile holds the nucleus colour
    top, left = (i // 3) * (100 + 24) + 3, (i % 3) * 106 + 3
    assert (
      np.abs(sheet[top : top + 100, left : left + 100].astype(int) - (110, 50, 150)).sum(-1) < 30
    ).sum() > 100, i
