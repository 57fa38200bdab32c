"""Keeping the central cell: lobes within the radius stay, everything else goes, and nothing is
relabelled."""

import jax
import jax.numpy as jnp
import numpy as np

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


def test_kept_pixels_keep_their_class_and_nothing_is_added():
  rng = np.random.default_rng(0)
  m = (rng.random((4, 32, 32)) < 0.1) * rng.integers(1, 5, (4, 32, 32))
  out = np.asarray(central_cell.central_cell(jnp.asarray(m, jnp.int32), 3))
  kept = out != 0
  np.testing.assert_array_equal(out[kept], m[kept])
  assert kept.sum() <= (m != 0).sum()
  # A radius that joins everything keeps everything.
  np.testing.assert_array_equal(np.asarray(central_cell.central_cell(jnp.asarray(m), 40)), m)


def test_a_negative_radius_is_named():
  config = base.get_config()
  config.eval.central_cell_radius = -1
  assert any('eval.central_cell_radius=-1' in p for p in config_checks.problems(config))
