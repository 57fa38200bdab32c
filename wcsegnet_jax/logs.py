"""What the commands log: ours, without libraries' lines a user cannot act on."""

import logging as std_logging

from absl import logging


# orbax warnings about what we do on purpose: an optional metadata file absent, and a
# checkpoint folder opened read only (evaluate and predict only read it).
_ORBAX_NOISE = ('Metadata file does not exist', 'read only', 'read_only=True')


def _not_orbax(record: std_logging.LogRecord) -> bool:
  """orbax logs every file it writes (INFO), and the warnings of _ORBAX_NOISE; its other
  warnings and errors (a failed or slow save) stay."""
  if 'orbax' not in record.pathname:
    return True
  message = record.getMessage()
  return record.levelno > std_logging.INFO and not any(n in message for n in _ORBAX_NOISE)


def _not_tfds_variant_probe(record: std_logging.LogRecord) -> bool:
  """TFDS warns that a build's folder has no dataset_info.json each time it looks for a build
  that is not there yet, i.e. before every first build."""
  return not ('tensorflow_datasets' in record.pathname
              and 'has no dataset_info.json' in record.getMessage())


def _not_tpu_probe(record: std_logging.LogRecord) -> bool:
  """JAX logs, on every machine without a TPU, that it could not open libtpu.so."""
  return not (record.levelno <= std_logging.INFO and "backend 'tpu'" in record.getMessage())


def quiet_library_logs() -> None:
  """Filters the library lines above; called once by each command's main."""
  logging.get_absl_logger().addFilter(_not_orbax)
  logging.get_absl_logger().addFilter(_not_tfds_variant_probe)
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_not_tpu_probe)
