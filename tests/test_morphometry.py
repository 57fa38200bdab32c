"""Tests of wcsegnet_jax.morphometry on shapes whose measurements are known."""

import math

import cv2
import numpy as np
import pytest

from wcsegnet_jax.cells import morphometry


def disk(radius: float, size: int = 101, centre=(50.0, 50.0)) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size]
  return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize('centre', [(50.0, 50.0), (50.3, 49.6)])
def test_disk(centre):
  r = 20
  m = morphometry.nucleus_measurements(disk(r, centre=centre))
  assert set(m) == set(morphometry.MEASUREMENTS)
  assert m['area_px'] == pytest.approx(math.pi * r**2, rel=0.02)
  assert m['perimeter_px'] == pytest.approx(2 * math.pi * r, rel=0.03)
  assert m['circularity'] == pytest.approx(1.0, rel=0.05)
  assert m['circularity'] <= 1.0
  assert m['solidity'] > 0.95
  assert m['nucleus_parts'] == 1


def test_two_lobes():
  mask = disk(10, centre=(50, 25)) | disk(10, centre=(50, 75))
  m = morphometry.nucleus_measurements(mask)
  assert m['nucleus_parts'] == 2
  single = morphometry.nucleus_measurements(disk(10, centre=(50, 25)))
  assert m['area_px'] == 2 * single['area_px']
  assert m['perimeter_px'] == pytest.approx(2 * single['perimeter_px'])
  assert m['solidity'] < 0.6  # the hull spans the gap between the lobes
  assert m['circularity'] == pytest.approx(single['circularity'] / 2, rel=1e-6)


def test_diagonal_touch_is_one_lobe():
  mask = np.zeros((10, 10), bool)
  mask[2:5, 2:5] = True
  mask[5:8, 5:8] = True  # touches only at a corner: 8-connected
  assert morphometry.nucleus_measurements(mask)['nucleus_parts'] == 1


def test_square():
  mask = np.zeros((60, 60), bool)
  mask[10:40, 15:45] = True
  m = morphometry.nucleus_measurements(mask)
  assert m['area_px'] == 900
  # The boundary polygon joins the boundary pixels' centres: a 29 x 29 square.
  assert m['perimeter_px'] == pytest.approx(4 * 29)
  assert m['circularity'] == pytest.approx(math.pi / 4, rel=1e-6)
  assert m['solidity'] == 1.0
  assert m['nucleus_parts'] == 1


def test_ellipse_perimeter():
  mask = np.zeros((101, 101), np.uint8)
  a, b = 30, 15
  cv2.ellipse(mask, (50, 50), (a, b), 25, 0, 360, 1, thickness=-1)
  h = ((a - b) / (a + b)) ** 2
  ramanujan = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
  m = morphometry.nucleus_measurements(mask.astype(bool))
  assert m['perimeter_px'] == pytest.approx(ramanujan, rel=0.03)
  assert m['solidity'] > 0.95


def test_concave_shape_has_lower_solidity():
  mask = np.zeros((50, 50), bool)
  mask[5:45, 5:15] = True
  mask[35:45, 5:45] = True  # an L: hull area 40*40 - 30*30/2 = 1150
  m = morphometry.nucleus_measurements(mask)
  assert m['solidity'] == pytest.approx(700 / 1150, rel=0.03)


@pytest.mark.parametrize('shape', [(1, 1), (3, 1), (1, 5)])
def test_tiny_shapes(shape):
  mask = np.zeros((9, 9), bool)
  mask[4 : 4 + shape[0], 2 : 2 + shape[1]] = True
  m = morphometry.nucleus_measurements(mask)
  assert m['area_px'] == shape[0] * shape[1] and m['nucleus_parts'] == 1
  assert m['circularity'] == 0.0  # encloses no area
  assert m['solidity'] == 1.0


def test_empty_mask():
  m = morphometry.nucleus_measurements(np.zeros((16, 16), bool))
  assert m == {
    'area_px': 0,
    'perimeter_px': 0.0,
    'circularity': 0.0,
    'solidity': 0.0,
    'nucleus_parts': 0,
  }
