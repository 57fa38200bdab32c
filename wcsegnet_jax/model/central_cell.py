"""Keeping only the white cell at an image's centre: for images that show one cell each.

The WBC Image Dataset's crops, like a CellaVision analyser's exports, show one white cell at
the centre, and their masks label that cell alone; a neighbour's nucleus cut by the border, a
platelet or a stain speck that the net calls nucleus is an error there. With
`eval.central_cell_radius` r > 0, a label map keeps the foreground (nucleus, or any part of a
cell where there is a cytoplasm class) that is joined to the foreground pixel nearest the
centre once every foreground pixel is grown by a disk of radius r; the rest becomes
background. r joins the separate lobes of one nucleus (lobes up to ~2r px apart): in the
training masks of the WBC Image Dataset every nucleus is one piece once grown by 7 px at
120x120 (docs/changelog.md, "The central cell, ..."). r is in pixels of `data.image_size`.

In jax (a flood fill by repeated 3x3 growth), so it runs inside the jitted evaluation step.
"""

import jax
import jax.numpy as jnp

from wcsegnet_jax.core import classes


def _disk(radius: int) -> jax.Array:
  r = jnp.arange(-radius, radius + 1)
  return (r[:, None] ** 2 + r[None, :] ** 2 <= radius**2).astype(jnp.float32)


def _grown(mask: jax.Array, kernel: jax.Array) -> jax.Array:
  """(B, H, W) bool mask grown by a (k, k) footprint."""
  out = jax.lax.conv_general_dilated(
    mask[:, None].astype(jnp.float32), kernel[None, None], (1, 1), 'SAME'
  )
  return out[:, 0] > 0.5


def central_cell(label_maps: jax.Array, radius: int) -> jax.Array:
  """(B, H, W) class maps with everything but the central cell set to background."""
  foreground = label_maps != classes.BACKGROUND
  b, h, w = foreground.shape
  radius = min(int(radius), h + w)  # a larger disk joins nothing more
  y, x = jnp.mgrid[:h, :w]
  distance = jnp.hypot(y - (h - 1) / 2, x - (w - 1) / 2)
  nearest = jnp.argmin(jnp.where(foreground, distance, jnp.inf).reshape(b, -1), axis=1)
  seed = (jnp.arange(h * w)[None] == nearest[:, None]).reshape(b, h, w) & foreground
  joined = _grown(foreground, _disk(radius))
  step = jnp.ones((3, 3), jnp.float32)

  def spread(state):
    reached, _ = state
    more = _grown(reached, step) & joined
    return more, (more != reached).any()

  reached, _ = jax.lax.while_loop(lambda s: s[1], spread, (seed, jnp.bool_(True)))
  return jnp.where(reached & foreground, label_maps, classes.BACKGROUND).astype(label_maps.dtype)
