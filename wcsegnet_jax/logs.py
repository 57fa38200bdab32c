"""What the commands log: ours, without libraries' lines a user cannot act on."""

import logging as std_logging
import threading

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
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_not_tpu_probe)
