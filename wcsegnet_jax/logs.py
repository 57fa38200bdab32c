"""What the commands log: ours, without libraries' lines a user cannot act on."""

import logging as std_logging

from absl import logging


def _not_orbax(record: std_logging.LogRecord) -> bool:
  """orbax logs every file it writes (INFO), and a warning per missing optional metadata file;
  its other warnings and errors (a failed or slow save) stay."""
  if 'orbax' not in record.pathname:
    return True
  return record.levelno > std_logging.INFO and 'Metadata file does not exist' not in (
      record.getMessage())


def _not_tpu_probe(record: std_logging.LogRecord) -> bool:
  """JAX logs, on every machine without a TPU, that it could not open libtpu.so."""
  return not (record.levelno <= std_logging.INFO and "backend 'tpu'" in record.getMessage())


def quiet_library_logs() -> None:
  """Filters the library lines above; called once by each command's main."""
  logging.get_absl_logger().addFilter(_not_orbax)
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_not_tpu_probe)
