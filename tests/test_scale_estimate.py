"""--field_scale=auto: the estimate follows an image's magnification, and says when it cannot."""

import pathlib

import numpy as np
import pytest

import conftest
from wcsegnet_jax.data import image_files
from wcsegnet_jax.inference import fields
from wcsegnet_jax.inference import scale_estimate
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import shipped_model

BCCD_FIELDS = pathlib.Path(conftest.ROOT).parent / 'shared' / 'datasets' / 'bccd_fields' / 'fields'
needs_real_data = pytest.mark.skipif(
  not (conftest.REAL_WBC_DIR / 'Dataset 2').is_dir() or not BCCD_FIELDS.is_dir(),
  reason='the WBC Image Dataset or bccd_fields is not in ../shared/datasets',
)


@pytest.fixture(scope='module')
def shipped():
  config = shipped_model.load_config()
  variables = shipped_model.load_variables(config)
  config.data.color = 'reinhard'  # another lab's field needs the colour step to show nuclei
  return segmenter.Segmenter(config, variables, tta=False)


@needs_real_data
@pytest.mark.parametrize(
  'path',
  [
    conftest.REAL_WBC_DIR / 'Dataset 2' / '001.bmp',
    conftest.REAL_WBC_DIR / 'Dataset 1' / '003.bmp',
    BCCD_FIELDS / 'BloodImage_00000.jpg',
  ],
)
def test_the_estimate_follows_a_known_rescaling_within_15_percent(shipped, path):
  """An image resized by f (0.25x-2x) gets 1/f times the original's scale, within 15%."""
  image = image_files.read_rgb(path)
  base = scale_estimate.estimate_scale(shipped, image)
  assert base is not None
  for factor in (0.5, 2.0) if image.shape[0] > 200 else (2.0, 4.0):
    resized = fields.resize_field(image, factor)
    estimate = scale_estimate.estimate_scale(shipped, resized)
    assert estimate is not None
    assert abs(np.log(estimate * factor / base)) < np.log(1.15), (factor, base, estimate)


@needs_real_data
def test_a_crop_is_put_near_the_training_scale(shipped):
  """A CellaVision crop (300 px, trained at 120) reads ~0.4; a Jiangxi crop (120 px) ~1."""
  cellavision = image_files.read_rgb(conftest.REAL_WBC_DIR / 'Dataset 2' / '001.bmp')
  assert 0.3 < scale_estimate.estimate_scale(shipped, cellavision) < 0.55


def test_no_nucleus_means_no_estimate_and_a_warned_fallback(shipped):
  blank = np.full((200, 240, 3), 235, np.uint8)
  assert scale_estimate.estimate_scale(shipped, blank) is None
  warnings = []
  scale_of = scale_estimate.scale_function('auto', shipped, warn=warnings.append)
  assert scale_of(blank) == scale_estimate.FALLBACK_SCALE
  assert len(warnings) == 1 and 'cannot be estimated' in warnings[0]
  assert scale_estimate.scale_function('0.3', shipped)(blank) == 0.3
