"""What the commands log: ours, without libraries' lines a user cannot act on."""

import logging as std_logging
import threading
import warnings

from absl import logging

from wcsegnet_jax.core import errors


# orbax warnings about what we do on purpose: an optional metadata file absent, and a
# checkpoint folder opened read only (evaluate and predict only read it).
_ORBAX_NOISE = ('Metadata file does not exist', 'read only', 'read_only=True')


def _not_orbax(record: std_logging.LogRecord) -> bool:
  """orbax logs every file it writes (INFO), the warnings of _ORBAX_NOISE, and each thread's
  traceback of a save the storage refused (a full disk: a thousand lines), which
  checkpointing.save or finish raises as one line; its other warnings and errors stay."""
  if 'orbax' not in record.pathname:
    return True
  if record.exc_info and errors.storage_failure(record.exc_info[1]):
    return False
  message = record.getMessage()
  return record.levelno > std_logging.INFO and not any(n in message for n in _ORBAX_NOISE)


def _not_tfds_variant_probe(record: std_logging.LogRecord) -> bool:
  """TFDS warns that a build's folder has no dataset_info.json each time it looks for a build
  that is not there yet, i.e. before every first build."""
  return not (
    'tensorflow_datasets' in record.pathname and 'has no dataset_info.json' in record.getMessage()
  )


def _not_storage_failure(record: std_logging.LogRecord) -> bool:
  """asyncio logs each of orbax's write tasks that a full disk failed ('Task exception was
  never retrieved'); the save raises it, once."""
  return not (record.exc_info and errors.storage_failure(record.exc_info[1]))


def _quiet_storage_failures_in_threads(previous):
  """A library's background thread (tensorboardX's event writer, orbax's) that a full disk
  stops prints its traceback; the main thread's next write fails the same way and says so in
  one line (errors.WriteError), so those tracebacks are left out."""

  def hook(args):
    if args.thread is not threading.main_thread() and errors.storage_failure(args.exc_value):
      return
    previous(args)

  return hook


def _not_tpu_probe(record: std_logging.LogRecord) -> bool:
  """JAX logs, on every machine without a TPU, that it could not open libtpu.so."""
  return not (record.levelno <= std_logging.INFO and "backend 'tpu'" in record.getMessage())


def quiet_library_logs() -> None:
  """Filters the library lines above; called once by each command's main."""
  logging.get_absl_logger().addFilter(_not_orbax)
  std_logging.getLogger('asyncio').addFilter(_not_storage_failure)
  threading.excepthook = _quiet_storage_failures_in_threads(threading.excepthook)
  logging.get_absl_logger().addFilter(_not_tfds_variant_probe)
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_not_tpu_probe)
  # orbax's writes that a full disk aborted are coroutines never awaited: Python says so at exit.
  warnings.filterwarnings(
    'ignore', message="coroutine '.*' was never awaited", category=RuntimeWarning
  )
