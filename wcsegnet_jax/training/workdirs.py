"""The workdir of a run: named, writable where the run will write, and held by one run at a time.

Checked before any data is built or compiled, so a bad path costs seconds, not an epoch.
"""

import contextlib
import datetime
import fcntl
import os
import pathlib
import socket
from typing import Iterator, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from wcsegnet_jax.core import errors

LOCK_FILE = '.lock'


WorkdirError = errors.WorkdirError
WorkdirBusyError = errors.WorkdirBusyError


def resolve(workdir: str | os.PathLike | None) -> pathlib.Path:
  """The absolute workdir; an empty one is an error, never the current folder."""
  if workdir is None or not str(workdir).strip():
    raise WorkdirError(
      "no workdir given (--workdir is empty): name the folder for the run's checkpoints and logs"
    )
  return pathlib.Path(workdir).expanduser().resolve()


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def _check_folder(path: pathlib.Path) -> None:
  """`path` is (or can be made as) a folder we can write into."""
  existing = _nearest_existing(path)
  where = '' if existing == path else f', so {path} cannot be made'
  if not existing.is_dir():
    raise WorkdirError(
      f'{existing} is a file, not a folder{where}; move it away or choose another --workdir'
    )
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(
      f'{existing} is not writable{where}; fix its permissions or choose another --workdir'
    )


def _check_file(path: pathlib.Path) -> None:
  """`path` is (or can be created as) a file we can write."""
  if path.is_dir():
    raise WorkdirError(f'{path} is a folder, not a file; move it away or choose another --workdir')
  if path.exists() and not os.access(path, os.W_OK):
    raise WorkdirError(f'{path} is not writable; fix its permissions or choose another --workdir')
  _check_folder(path.parent)


def check_writable(
  workdir: pathlib.Path, folders: Sequence[str] = (), files: Sequence[str] = (), create: bool = True
) -> None:
  """Checks that every folder and file a run writes under `workdir` can be written (creating
  `workdir` if `create`): one error naming the first path that cannot."""
  _check_folder(workdir)
  if create:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      probe = workdir / f'.write_test.{socket.gethostname()}.{os.getpid()}'
      probe.write_text('ok')
      probe.unlink()
    except OSError as e:  # e.g. a read-only file system, which os.access does not see
      raise WorkdirError(f'workdir {workdir} is not writable: {e.strerror}') from None
  for name in folders:
    _check_folder(workdir / name)
  for name in files:
    _check_file(workdir / name)


def _holder() -> str:
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  return f'pid {os.getpid()} on host {socket.gethostname()}, started {started}'


@contextlib.contextmanager
def held(workdir: pathlib.Path) -> Iterator[None]:
  """Holds `workdir/.lock` for the block; a second holder fails at once, naming the first.

  Every process of a multi-process run calls it: process 0 takes the lock, and if it cannot,
  every process raises, rather than the others waiting for it at their next collective.
  """
  if jax.process_count() == 1:
    with _locked(workdir):
      yield
    return
  with contextlib.ExitStack() as stack:
    failed = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(_locked(workdir))
      except OSError as e:
        failed = e
    if multihost_utils.broadcast_one_to_all(np.int32(failed is not None)):
      if failed is not None:
        raise failed
      raise WorkdirBusyError(
        f'workdir {workdir} could not be locked by process 0 (in use by '
        f'another run? its output says why)'
      )
    yield


@contextlib.contextmanager
def _locked(workdir: pathlib.Path) -> Iterator[None]:
  """flock: the OS drops the lock when its process dies, even by SIGKILL, so none is left stuck."""
  lock = open(workdir / LOCK_FILE, 'a+')
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.seek(0)
    holder = lock.read().strip() or 'a process that is starting'
    lock.close()
    raise WorkdirBusyError(
      f'workdir {workdir} is in use by another run ({holder}); wait for it '
      f'to end, or use another --workdir'
    ) from None
  except OSError as e:  # a file system without locks (some NFS): run, but say it is unguarded
    logging.warning(
      'cannot lock %s (%s); nothing stops a second run in this workdir', lock.name, e.strerror
    )
  try:
    lock.truncate(0)
    lock.write(_holder() + '\n')
    lock.flush()
    yield
  finally:
    lock.truncate(0)
    lock.close()  # releases the lock
