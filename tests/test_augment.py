"""Tests of wcsegnet_jax.augment: exact special cases, image/label alignment, parameter ranges."""

import subprocess
import sys

import cv2
import ml_collections
import numpy as np
import pytest

from configs import base
from conftest import ROOT
from wcsegnet_jax.core import classes
from wcsegnet_jax.data import augment

FILL_MODES = ('nearest', 'reflect', 'constant')


def random_image(rng, h, w, low=0):
  return rng.integers(low, 256, size=(h, w, 3), dtype=np.uint8)


def blocky_label_map(rng, h, w, block=10, labels=(0, 1, 2, 3)):
  """A label map of square blocks, each one random label: long straight class boundaries."""
  small = rng.choice(np.asarray(labels, np.uint8), size=(-(-h // block), -(-w // block)))
  return np.kron(small, np.ones((block, block), np.uint8))[:h, :w]


def warp(image, label_map, params, fill_mode='nearest'):
  h, w = label_map.shape
  return augment.warp_pair(image, label_map, augment.inverse_affine_matrix(params, h, w), fill_mode)


def aug_config(**overrides):
  a = base.get_config().augment
  for key, value in overrides.items():
    setattr(a, key, value)
  return a


def test_zero_params_are_the_identity_matrix():
  np.testing.assert_array_equal(
    augment.inverse_affine_matrix(augment.AffineParams(), 48, 64), np.eye(3)
  )


@pytest.mark.parametrize('fill_mode', FILL_MODES)
@pytest.mark.parametrize('shape', [(120, 120), (37, 52)])
def test_zero_params_leave_the_pair_unchanged(fill_mode, shape):
  rng = np.random.default_rng(0)
  image, label_map = random_image(rng, *shape), blocky_label_map(rng, *shape, block=3)
  out_image, out_labels = warp(image, label_map, augment.AffineParams(), fill_mode)
  np.testing.assert_array_equal(out_image, image)
  np.testing.assert_array_equal(out_labels, label_map)


@pytest.mark.parametrize('fill_mode', FILL_MODES)
@pytest.mark.parametrize('shape', [(120, 120), (37, 52)])
def test_flip_is_exact(fill_mode, shape):
  rng = np.random.default_rng(1)
  image, label_map = random_image(rng, *shape), blocky_label_map(rng, *shape, block=3)
  out_image, out_labels = warp(image, label_map, augment.AffineParams(flip=True), fill_mode)
  np.testing.assert_array_equal(out_image, np.flip(image, axis=1))
  np.testing.assert_array_equal(out_labels, np.flip(label_map, axis=1))


@pytest.mark.parametrize('size', [120, 33])
@pytest.mark.parametrize('degrees,k', [(90.0, 1), (-90.0, -1), (180.0, 2), (270.0, 3)])
def test_right_angle_rotations_are_exact(size, degrees, k):
  """+90 degrees turns the picture counter-clockwise as displayed (rows down): np.rot90's k=1."""
  rng = np.random.default_rng(2)
  image, label_map = random_image(rng, size, size), blocky_label_map(rng, size, size, block=3)
  out_image, out_labels = warp(image, label_map, augment.AffineParams(rotation_deg=degrees))
  np.testing.assert_array_equal(out_image, np.rot90(image, k=k))
  np.testing.assert_array_equal(out_labels, np.rot90(label_map, k=k))


def test_integer_shift_is_an_exact_translation():
  """The matrix maps output pixels to the input pixels they sample: +5 px reads 5 px right."""
  rng = np.random.default_rng(3)
  image, label_map = random_image(rng, 40, 50), blocky_label_map(rng, 40, 50, block=3)
  out_image, out_labels = warp(image, label_map, augment.AffineParams(shift_x_px=5, shift_y_px=-3))
  np.testing.assert_array_equal(out_image[3:, :-5], image[:-3, 5:])
  np.testing.assert_array_equal(out_labels[3:, :-5], label_map[:-3, 5:])


def test_centre_pixel_is_fixed_without_shift():
  rng = np.random.default_rng(4)
  image, label_map = random_image(rng, 41, 41), blocky_label_map(rng, 41, 41, block=3)
  for _ in range(20):
    p = augment.AffineParams(
      rotation_deg=rng.uniform(-180, 180),
      shear_deg=rng.uniform(-20, 20),
      zoom_x=rng.uniform(0.5, 1.5),
      zoom_y=rng.uniform(0.5, 1.5),
    )
    out_image, out_labels = warp(image, label_map, p)
    np.testing.assert_array_equal(out_image[20, 20], image[20, 20])
    assert out_labels[20, 20] == label_map[20, 20]


def uniform_3x3(label_map):
  """Pixels whose whole 3x3 neighbourhood holds a single label (so not on the outer ring)."""
  kernel = np.ones((3, 3), np.uint8)
  uniform = cv2.erode(label_map, kernel) == cv2.dilate(label_map, kernel)
  uniform[[0, -1], :] = uniform[:, [0, -1]] = False
  return uniform


@pytest.mark.parametrize('fill_mode', FILL_MODES)
@pytest.mark.parametrize('ranges', ['paper', 'strong'])
def test_image_and_label_map_stay_aligned(fill_mode, ranges):
  """The image's colours encode its labels; after a warp they still agree away from boundaries.

  Bilinear image sampling reads the 2x2 input pixels around the sampled point; where the warped
  label map is uniform over 3x3, those pixels share the label, so the colour must be exact up to
  OpenCV's fixed-point weights (1/32 steps).
  """
  rng = np.random.default_rng(5)
  a = aug_config(fill_mode=fill_mode)
  if ranges == 'strong':
    a.rotation_deg, a.shear_deg, a.zoom = 180.0, 20.0, 0.3
  checked = 0
  for _ in range(40):
    h, w = (120, 120) if rng.random() < 0.5 else (96, 130)
    label_map = blocky_label_map(rng, h, w, block=int(rng.integers(6, 16)))
    image = classes.CLASS_COLORS[label_map]
    out = augment.augment_example({'image': image, 'label_map': label_map}, rng, a)
    assert out['image'].shape == image.shape and out['image'].dtype == np.uint8
    assert out['label_map'].shape == label_map.shape and out['label_map'].dtype == np.uint8
    keep = uniform_3x3(out['label_map'])
    error = np.abs(out['image'].astype(int) - classes.CLASS_COLORS[out['label_map']])
    assert error[keep].max() <= 8, f'misaligned by up to {error[keep].max()}'
    checked += keep.sum()
  assert checked > 0.5 * 40 * 120 * 96  # most pixels are away from boundaries


@pytest.mark.parametrize('fill_mode', FILL_MODES)
@pytest.mark.parametrize('labels', [(0, 2), (1, 3), (1, 2, 3)])
def test_labels_stay_within_the_input_set(fill_mode, labels):
  rng = np.random.default_rng(6)
  a = aug_config(fill_mode=fill_mode, rotation_deg=90.0, width_shift=0.4, height_shift=0.4)
  allowed = set(labels) | ({classes.BACKGROUND} if fill_mode == 'constant' else set())
  for _ in range(10):
    label_map = blocky_label_map(rng, 60, 70, block=7, labels=labels)
    out = augment.augment_example(
      {'image': random_image(rng, 60, 70), 'label_map': label_map}, rng, a
    )
    assert set(np.unique(out['label_map']).tolist()) <= allowed


def test_sampled_params_stay_in_range():
  rng = np.random.default_rng(7)
  h, w = 90, 150  # not square: shifts are fractions of their own axis
  a = aug_config(rotation_deg=40.0, width_shift=0.2, height_shift=0.1, shear_deg=5.0, zoom=0.3)
  draws = [augment.sample_params(rng, a, h, w) for _ in range(3000)]

  def check(values, low, high):
    values = np.asarray(values, float)
    assert values.min() >= low and values.max() <= high
    span = high - low  # draws fill the range: the units are the configured ones
    assert values.min() < low + 0.02 * span and values.max() > high - 0.02 * span

  check([p.rotation_deg for p in draws], -40.0, 40.0)
  check([p.shift_x_px for p in draws], -0.2 * w, 0.2 * w)
  check([p.shift_y_px for p in draws], -0.1 * h, 0.1 * h)
  check([p.shear_deg for p in draws], -5.0, 5.0)
  check([p.zoom_x for p in draws], 0.7, 1.3)
  check([p.zoom_y for p in draws], 0.7, 1.3)
  assert not all(p.zoom_x == p.zoom_y for p in draws)  # Keras' independent x and y zoom
  assert 0.45 < np.mean([p.flip for p in draws]) < 0.55

  a.zoom_independent_xy, a.horizontal_flip = False, False
  draws = [augment.sample_params(rng, a, h, w) for _ in range(200)]
  assert all(p.zoom_x == p.zoom_y for p in draws)
  assert not any(p.flip for p in draws)

  a.zoom_range = (0.7, 1.15)  # replaces zoom's symmetric range
  draws = [augment.sample_params(rng, a, h, w) for _ in range(3000)]
  check([p.zoom_x for p in draws], 0.7, 1.15)


def test_paper_config_ranges():
  """The paper's settings, read as documented: shear 0.2 degrees, shifts 20% of 120 px."""
  rng = np.random.default_rng(8)
  draws = [augment.sample_params(rng, base.get_config().augment, 120, 120) for _ in range(500)]
  assert max(abs(p.shear_deg) for p in draws) <= 0.2
  assert max(abs(p.shift_x_px) for p in draws) <= 24.0
  assert max(abs(p.rotation_deg) for p in draws) <= 40.0


def test_zero_ranges_through_augment_example_are_the_identity():
  a = aug_config(
    rotation_deg=0.0,
    width_shift=0.0,
    height_shift=0.0,
    shear_deg=0.0,
    zoom=0.0,
    horizontal_flip=False,
  )
  rng = np.random.default_rng(9)
  for shape in ((120, 120), (50, 64)):
    example = {
      'image': random_image(rng, *shape),
      'label_map': blocky_label_map(rng, *shape, block=3),
      'cell_type': np.int32(2),
      'file_id': b'007',
    }
    out = augment.augment_example(example, rng, ml_collections.FrozenConfigDict(a))
    np.testing.assert_array_equal(out['image'], example['image'])
    np.testing.assert_array_equal(out['label_map'], example['label_map'])
    assert out['cell_type'] == 2 and out['file_id'] == b'007'  # other fields pass through


def test_augment_example_is_deterministic_given_the_rng():
  a = aug_config()
  rng = np.random.default_rng(10)
  example = {'image': random_image(rng, 64, 64), 'label_map': blocky_label_map(rng, 64, 64)}
  one = augment.augment_example(example, np.random.default_rng(3), a)
  two = augment.augment_example(example, np.random.default_rng(3), a)
  other = augment.augment_example(example, np.random.default_rng(4), a)
  np.testing.assert_array_equal(one['image'], two['image'])
  np.testing.assert_array_equal(one['label_map'], two['label_map'])
  assert not np.array_equal(one['image'], other['image'])


@pytest.mark.parametrize(
  'fill_mode,zeros_expected', [('nearest', False), ('reflect', False), ('constant', True)]
)
def test_border_fill(fill_mode, zeros_expected):
  """'nearest' (Keras' default) replicates the edge: no black border in an image without black."""
  rng = np.random.default_rng(11)
  image = random_image(rng, 120, 120, low=1)
  label_map = np.full((120, 120), 2, np.uint8)
  for p in (
    augment.AffineParams(shift_x_px=30.0, shift_y_px=-30.0),
    augment.AffineParams(rotation_deg=40.0, zoom_x=1.2, zoom_y=1.2),
  ):
    out_image, out_labels = warp(image, label_map, p, fill_mode)
    assert (out_image == 0).any() == zeros_expected
    assert (out_labels == 0).any() == zeros_expected


def test_nearest_fill_replicates_the_edge_rows():
  rng = np.random.default_rng(12)
  image = random_image(rng, 30, 40, low=1)
  out_image, _ = warp(
    image, np.zeros((30, 40), np.uint8), augment.AffineParams(shift_x_px=10.0), 'nearest'
  )
  # Columns sampled beyond the right edge repeat the last input column.
  np.testing.assert_array_equal(out_image[:, 29:], np.repeat(image[:, -1:], 11, axis=1))


def _jitter_config(**values):
  aug = base.get_config().augment
  aug.update(values)
  return aug


def test_color_jitter_off_is_the_identity():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  out = augment.color_jitter(image, np.random.default_rng(1), _jitter_config())
  assert out is image


def test_color_jitter_hue_keeps_gray_pixels_gray_and_turns_colours():
  image = np.zeros((4, 4, 3), np.uint8)
  image[:2] = 128  # gray: on the rotation axis
  image[2:] = (200, 60, 60)  # a red
  aug = _jitter_config(hue_deg=60.0)
  out = augment.color_jitter(image, np.random.default_rng(2), aug)
  assert out.dtype == np.uint8 and out.shape == image.shape
  np.testing.assert_allclose(out[:2], 128, atol=1)
  assert np.abs(out[2:].astype(int) - image[2:]).max() > 5
  # A hue rotation keeps the mean of the channels (the projection on the gray axis).
  np.testing.assert_allclose(out[2:].mean(-1), image[2:].mean(-1), atol=1)


def test_color_jitter_leaves_the_label_map_alone():
  rng = np.random.default_rng(3)
  example = {
    'image': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
    'label_map': (rng.random((32, 32)) > 0.5).astype(np.uint8),
  }
  aug = _jitter_config(
    rotation_deg=0.0,
    width_shift=0.0,
    height_shift=0.0,
    shear_deg=0.0,
    zoom=0.0,
    horizontal_flip=False,
    brightness=0.3,
    contrast=0.3,
    saturation=0.3,
    hue_deg=20.0,
  )
  out = augment.augment_example(example, rng, aug)
  np.testing.assert_array_equal(out['label_map'], example['label_map'])
  assert not np.array_equal(out['image'], example['image'])


def test_optics_jitter_off_is_the_identity_and_each_part_acts_within_its_range():
  rng = np.random.default_rng(4)
  image = cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (0, 0), 2)
  assert augment.optics_jitter(image, rng, _jitter_config()) is image
  gray = np.full((8, 8, 3), 64, np.uint8)
  gammas = [
    augment.optics_jitter(gray, np.random.default_rng(k), _jitter_config(gamma=0.3))
    for k in range(20)
  ]
  # 64 ** exp(g) on the 0..1 scale, g in [-0.3, 0.3]: between 32 and 92 levels, never equal.
  levels = [int(g[0, 0, 0]) for g in gammas]
  assert all(32 <= v <= 92 for v in levels) and len(set(levels)) > 5
  edge = np.zeros((16, 16, 3), np.uint8)
  edge[:, 8:] = 255
  blurred = augment.optics_jitter(edge, np.random.default_rng(5), _jitter_config(blur_sigma=3.0))
  assert 0 < blurred[8, 7, 0] < 255 or 0 < blurred[8, 8, 0] < 255  # the step is softened
  noisy = augment.optics_jitter(gray, np.random.default_rng(6), _jitter_config(noise_std=10.0))
  assert noisy.std() > 0.5 and abs(noisy.mean() - 64) < 3
  compressed = augment.optics_jitter(
    image, np.random.default_rng(7), _jitter_config(jpeg_quality=10)
  )
  assert compressed.shape == image.shape and compressed.dtype == np.uint8
  assert 0 < np.abs(compressed.astype(int) - image).mean() < 20


def test_optics_prob_jitters_that_share_of_the_images_and_at_one_replays_runs_before_it():
  image = cv2.GaussianBlur(
    np.random.default_rng(8).integers(0, 256, (32, 32, 3), dtype=np.uint8), (0, 0), 2
  )
  knobs = dict(gamma=0.3, noise_std=5.0, jpeg_quality=50)
  without_key = _jitter_config(**knobs).to_dict()
  del without_key['optics_prob']  # a run's config from before the knob
  for k in range(5):  # optics_prob 1 draws nothing more: the same images as without the key
    before = augment.optics_jitter(
      image, np.random.default_rng(k), ml_collections.ConfigDict(without_key)
    )
    at_one = augment.optics_jitter(
      image, np.random.default_rng(k), _jitter_config(optics_prob=1.0, **knobs)
    )
    np.testing.assert_array_equal(at_one, before)
    never = augment.optics_jitter(
      image, np.random.default_rng(k), _jitter_config(optics_prob=0.0, **knobs)
    )
    assert never is image
  rng = np.random.default_rng(9)
  off = _jitter_config(optics_prob=0.5)  # no optics knob on: no draw either, whatever the share
  assert augment.optics_jitter(image, rng, off) is image
  assert rng.integers(1 << 30) == np.random.default_rng(9).integers(1 << 30)
  half = _jitter_config(optics_prob=0.5, **knobs)
  changed = [augment.optics_jitter(image, rng, half) is not image for _ in range(400)]
  assert 0.4 < np.mean(changed) < 0.6  # binomial sd 0.025


def test_import_leaves_opencv_threads_alone():
  # Only a training pipeline turns OpenCV's threads off (input_pipeline), not every importer.
  code = (
    'import cv2; cv2.setNumThreads(3); from wcsegnet_jax.data import augment; '
    'print(cv2.getNumThreads())'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == '3'
