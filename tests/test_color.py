"""The colour step: what it computes, what it removes, and that training data, evaluation and
predict apply the very same step."""

import cv2
import numpy as np
import pytest

import conftest
import test_data
from wcsegnet_jax.data import color
from wcsegnet_jax.data import held_out
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import records
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.inference import segmenter

REFERENCE = (73.1, 16.0, 3.0, 18.6, 11.6, 16.7)
ANCHORS = (90.2, 5.3, 15.7, 24.2, 42.6, -45.4)  # two_point's, base.py's data.color_anchors
STEPS = {'reinhard': REFERENCE, 'two_point': ANCHORS}


def smear(rng, size=96, nucleus_radius=None, nucleus=True):
  """A stained-smear-like picture: pink background, red cells, a purple nucleus, noise."""
  image = np.zeros((size, size, 3), np.uint8) + np.array([235, 215, 225], np.uint8)
  for _ in range(6):
    centre = tuple(int(v) for v in rng.integers(10, size - 10, 2))
    cv2.circle(image, centre, int(rng.integers(8, 14)), (200, 120, 140), -1)
  if nucleus:
    radius = nucleus_radius or size // 6
    cv2.circle(image, (size // 2, size // 2), radius, (110, 50, 150), -1)
  return np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)


def test_reinhard_moves_the_lab_statistics_to_the_reference():
  image = smear(np.random.default_rng(0))
  stats = color.lab_statistics(color.reinhard(image, REFERENCE))
  np.testing.assert_allclose(stats, REFERENCE, atol=1.5)  # uint8 rounding and gamut clipping


def test_two_point_moves_the_anchors_to_the_reference():
  image = smear(np.random.default_rng(0))
  bright, dark = color.two_point_anchors(color.to_lab(color.two_point(image, ANCHORS)))
  np.testing.assert_allclose(np.concatenate([bright, dark]), ANCHORS, atol=2.0)


@pytest.mark.parametrize('step', sorted(STEPS))
def test_a_lab_of_other_colours_reaches_the_model_in_the_same_colours(step):
  """Another lamp and stain (a per-channel gain and offset, then dimmer) is undone: the two
  standardised images differ far less than the originals."""
  standardize = color.color_step(step, STEPS[step])
  image = smear(np.random.default_rng(1))
  other = np.clip(image.astype(np.float32) * (0.85, 0.95, 1.1) - (10, 0, -15), 0, 255)
  other = other.astype(np.uint8)
  before = np.abs(image.astype(int) - other).mean()
  after = np.abs(standardize(image).astype(int) - standardize(other))
  assert before > 10 and after.mean() < before / 4


def test_two_point_keeps_the_background_where_the_cell_fills_the_crop():
  """The same stain with a nucleus filling 3% or 40% of the crop: two_point maps the background
  alike; reinhard, measuring the whole crop, moves it with the cell's size."""
  small = smear(np.random.default_rng(3), nucleus_radius=10)
  large = smear(np.random.default_rng(3), nucleus_radius=34)
  background = (small == large).all(-1)  # the pixels the larger nucleus leaves alone

  def shift(step):
    standardize = color.color_step(step, STEPS[step])
    return np.abs(standardize(small).astype(int) - standardize(large))[background].mean()

  assert shift('two_point') < 2.0 and 3 * shift('two_point') < shift('reinhard')


def test_two_point_without_a_nucleus_is_not_stretched():
  """A view without a white cell has no nucleus anchor (its darkest pixels are red cells, no
  bluer than the plasma): it is shifted, not stretched, so its red cells keep their contrast
  instead of being pushed towards nucleus colours; a flat image stays flat."""
  image = smear(np.random.default_rng(4), nucleus=False)
  lab = color.to_lab
  spread = lab(color.two_point(image, ANCHORS)).std((0, 1)) / lab(image).std((0, 1))
  np.testing.assert_allclose(spread, 1.0, atol=0.1)
  with_nucleus = smear(np.random.default_rng(4))
  after = lab(color.two_point(with_nucleus, ANCHORS)).std((0, 1))
  assert (after / lab(with_nucleus).std((0, 1))).max() > 1.3  # with a nucleus: stretched
  flat = np.full((8, 8, 3), 128, np.uint8)
  assert color.two_point(flat, ANCHORS).std(axis=(0, 1)).max() < 1.0


def test_stretch_known_values():
  """The factor: the span ratio, clipped; 1 for a reversed channel or a near-flat one (eased
  in, no jump); 1 everywhere when the dark anchor is not bluer than the background."""
  reference = np.array([-60.0, 40.0, -60.0], np.float32)
  np.testing.assert_allclose(color.stretch(np.array([-30.0, 20.0, -30.0]), reference), [2, 2, 2])
  np.testing.assert_allclose(color.stretch(np.array([-10.0, 40.0, -60.0]), reference), [3, 1, 1])
  np.testing.assert_allclose(color.stretch(np.array([-60.0, -20.0, -60.0]), reference), [1, 1, 1])
  eased = color.stretch(np.array([-60.0, 2.0, -60.0]), reference)[1]  # halfway up the ramp
  np.testing.assert_allclose(eased, 1 + (color.STRETCH_RANGE[1] - 1) * 0.5)
  np.testing.assert_allclose(color.stretch(np.array([-30.0, 20.0, 3.0]), reference), [1, 1, 1])
  half_blue = color.stretch(np.array([-30.0, 20.0, -12.0]), reference)  # half the full stretch
  np.testing.assert_allclose(half_blue, [1.5, 1.5, 2.0])


def test_none_is_the_identity_and_a_flat_image_is_not_blown_up():
  image = smear(np.random.default_rng(2))
  assert color.color_step('none')(image) is image
  flat = np.full((8, 8, 3), 128, np.uint8)
  out = color.reinhard(flat, REFERENCE)
  assert out.std(axis=(0, 1)).max() < 1.0  # one colour stays one colour (std floored)
  with pytest.raises(ValueError, match='unknown colour step'):
    color.color_step('macenko')


@pytest.mark.parametrize('step', sorted(STEPS))
def test_training_data_evaluation_and_predict_apply_the_same_step(wbc_raw, tmp_path, step):
  """The built training example, the held-out reader's example and the batch predict sends to
  the model hold the same uint8 pixels: the colour step on the image as read, then resized."""
  config = conftest.data_config(wbc_raw[0], tmp_path / 'tfds', color=step)
  builder = tfds_builder.prepare('cellavision', config.data)
  file_id, built = test_data.read_split(builder, 'train')[0]
  record = next(
    r
    for r in records.list_raw_records(
      'cellavision', wbc_raw[0], tfds_builder.classes.table_of(config.data)
    )
    if r.file_id == file_id
  )
  as_read = image_files.read_rgb(record.image_path)
  expected = image_files.resize_image(
    color.color_step(step, STEPS[step])(as_read), config.data.image_size
  )
  np.testing.assert_array_equal(built['image'], expected)
  assert not np.array_equal(expected, image_files.resize_image(as_read, config.data.image_size))
  evaluated = held_out.RawExamples([record], config.data)[0]
  np.testing.assert_array_equal(evaluated['image'], expected)
  seen = []
  segment = segmenter.Segmenter.__new__(segmenter.Segmenter)
  segment.config, segment.size, segment.batch_size = config, config.data.image_size, 2
  segment._tiles = lambda batch: seen.append(batch.copy()) or np.zeros(batch.shape[:3] + (4,))
  segment.crops([as_read])
  np.testing.assert_array_equal(seen[0][0], expected)
  # A build without the colour step keeps its earlier name (no colour settings in it).
  plain = conftest.data_config(wbc_raw[0], tmp_path / 'tfds')
  assert tfds_builder.get_builder('cellavision', plain.data).builder_config.name != (
    builder.builder_config.name
  )
