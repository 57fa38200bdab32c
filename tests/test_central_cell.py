"""Keeping the central cell: lobes within the radius stay, everything else goes, and nothing is
relabelled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from wcsegnet_jax.core import config_checks
from wcsegnet_jax.model import central_cell
from configs import base


def _maps():
  m = np.zeros((3, 40, 40), np.int32)
  m[0, 15:25, 15:20] = 1  # the central cell's nucleus in two lobes 6 px apart
  m[0, 15:25, 26:30] = 1
  m[0, 0:4, 0:4] = 2  # a neighbour's nucleus in the corner
  m[1, 2:6, 30:34] = 3  # the only cell, off centre: it is the one nearest the centre
  m[1, 10:12, 20:22] = 4  # a cytoplasm pixel patch nearer the centre still: any foreground seeds
  return m


def test_lobes_within_the_radius_stay_and_far_parts_go():
  m = _maps()
  out = np.asarray(central_cell.central_cell(jnp.asarray(m), 4))
  np.testing.assert_array_equal(out[0], np.where(m[0] == 1, 1, 0))
  assert not out[2].any()  # nothing to keep in an empty map


def test_a_small_radius_keeps_the_lobe_at_the_centre_alone():
  m = _maps()
  out = np.asarray(jax.jit(central_cell.central_cell, static_argnums=1)(jnp.asarray(m), 2))
  expected = np.zeros_like(m[0])
  expected[15:25, 15:20] = 1
  np.testing.assert_array_equal(out[0], expected)
  # The second map's cell nearest the centre is the small patch: the far one goes.
  assert (out[1] == 4).sum() == 4 and not (out[1] == 3).any()


def _reference(m, radius):
  """The same rule with scipy: grow by the disk, label, keep the seed's piece."""
  r = np.arange(-radius, radius + 1)
  disk = r[:, None] ** 2 + r[None, :] ** 2 <= radius**2
  out = np.zeros_like(m)
  for i, one in enumerate(m):
    foreground = one != 0
    if not foreground.any():
      continue
    h, w = one.shape
    y, x = np.mgrid[:h, :w]
    distance = np.where(foreground, np.hypot(y - (h - 1) / 2, x - (w - 1) / 2), np.inf)
    seed = np.unravel_index(np.argmin(distance), one.shape)
    pieces, _ = ndimage.label(ndimage.binary_dilation(foreground, disk), np.ones((3, 3)))
    out[i] = np.where((pieces == pieces[seed]) & foreground, one, 0)
  return out


@pytest.mark.parametrize('radius, density', [(1, 0.06), (2, 0.03), (3, 0.015)])
def test_it_keeps_what_a_scipy_labelling_keeps(radius, density):
  rng = np.random.default_rng(radius)
  m = (rng.random((6, 33, 37)) < density) * rng.integers(1, 5, (6, 33, 37))
  m[0] = 0  # an empty map in the batch
  out = np.asarray(central_cell.central_cell(jnp.asarray(m, jnp.int32), radius))
  np.testing.assert_array_equal(out, _reference(m, radius))
  assert (out != 0).sum() < (m != 0).sum()  # something was taken away
  # A radius that joins everything keeps everything.
  np.testing.assert_array_equal(np.asarray(central_cell.central_cell(jnp.asarray(m), 40)), m)


def test_a_negative_radius_is_named():
  config = base.get_config()
  config.eval.central_cell_radius = -1
  assert any('eval.central_cell_radius=-1' in p for p in config_checks.problems(config))
