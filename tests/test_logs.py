"""Tests of wcsegnet_jax.logs: library lines a user cannot act on are filtered, ours are not."""

import logging as std_logging

from absl import logging

from wcsegnet_jax.core import logs


def _record(name, level, message, pathname='x.py'):
  return std_logging.LogRecord(name, level, pathname, 1, message, (), None)


def test_tpu_probe_and_orbax_lines_are_filtered_ours_kept():
  logs.quiet_library_logs()
  jax_logger = std_logging.getLogger('jax._src.xla_bridge')
  absl_logger = logging.get_absl_logger()
  probe = _record(
    'jax._src.xla_bridge',
    std_logging.INFO,
    "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so",
  )
  assert not jax_logger.filter(probe)
  # A real problem with the TPU backend (an error, not the INFO probe) still shows.
  assert jax_logger.filter(
    _record('jax._src.xla_bridge', std_logging.ERROR, "backend 'tpu' failed")
  )
  assert not absl_logger.filter(
    _record('absl', std_logging.INFO, 'wrote a file', '/site-packages/orbax/checkpoint/x.py')
  )
  assert absl_logger.filter(
    _record('absl', std_logging.INFO, 'step 2: loss=1.0', '/wcsegnet_jax/metric_writers.py')
  )


def test_read_only_checkpoint_and_missing_build_warnings_are_filtered():
  """evaluate and predict open checkpoints read only on purpose; TFDS warns before every first
  build. Neither is anything a user can act on; other warnings of those libraries stay."""
  logs.quiet_library_logs()
  absl_logger = logging.get_absl_logger()
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  tfds = '/site-packages/tensorflow_datasets/core/utils/file_utils.py'
  assert not absl_logger.filter(
    _record('absl', std_logging.WARNING, 'Given directory is read only=/w/checkpoints', orbax)
  )
  assert not absl_logger.filter(
    _record('absl', std_logging.WARNING, '/w/checkpoints is read only, save will be skipped', orbax)
  )
  assert not absl_logger.filter(
    _record(
      'absl',
      std_logging.WARNING,
      'Variant folder /t/wbc_segmentation/jiangxi-64-ab/1.2.0 has no dataset_info.json',
      tfds,
    )
  )
  assert absl_logger.filter(_record('absl', std_logging.WARNING, 'save took 400 s', orbax))
  assert absl_logger.filter(_record('absl', std_logging.WARNING, 'a dataset is broken', tfds))
