"""What the commands log: ours, without libraries' lines a user cannot act on."""

import logging as std_logging

from absl import logging

from wcsegnet_jax import errors


def _not_orbax(record: std_logging.LogRecord) -> bool:
  """orbax logs every file it writes (INFO), a warning per missing optional metadata file, and
  each thread's traceback of a save the storage refused (a full disk: a thousand lines), which
  checkpointing.save or finish raises as one line; its other warnings and errors stay."""
  if 'orbax' not in record.pathname:
    return True
  if record.exc_info and errors.storage_failure(record.exc_info[1]):
    return False
  return record.levelno > std_logging.INFO and 'Metadata file does not exist' not in (
      record.getMessage())


def _not_tpu_probe(record: std_logging.LogRecord) -> bool:
  """JAX logs, on every machine without a TPU, that it could not open libtpu.so."""
  return not (record.levelno <= std_logging.INFO and "backend 'tpu'" in record.getMessage())


def quiet_library_logs() -> None:
  """Filters the library lines above; called once by each command's main."""
  logging.get_absl_logger().addFilter(_not_orbax)
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_not_tpu_probe)
