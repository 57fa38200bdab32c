"""orbax checkpoints of the train state and the grain iterator, for exact resume (a step's variables
are read for evaluation and prediction by `model.checkpoints`).

Layout: `workdir/checkpoints/<step>/{state,data_iter}` written asynchronously by a
`CheckpointManager`; orbax writes each step into a temporary folder and renames it when complete,
so a run killed mid-write leaves the earlier checkpoints intact and the half-written one ignored.
A failed write is an error (at the next save or at `finish`), never a hang.
We keep the last `keep_checkpoints` steps plus the best by test Dice.
"""

import contextlib
import json
import pathlib
import re
import signal
import threading
from typing import Any, Iterator

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.core import run_files
from wcsegnet_jax.model import checkpoints

BEST_METRIC = 'test_dice'
run_files.CONFIG_FILE = 'config.json'
run_files.DATA_FILE = 'data.json'  # the images a run started on (input_pipeline.data_record)


CheckpointError = errors.CheckpointError


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
  """Ctrl-C (or SIGTERM, when the command stops on it) during the block is raised when it ends,
  so a save is started whole or not at all."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  watched = [
    sig for sig in (signal.SIGINT, signal.SIGTERM) if callable(signal.getsignal(sig))
  ]  # only signals Python code handles
  caught = []
  previous = {sig: signal.signal(sig, lambda *_: caught.append(True)) for sig in watched}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if caught:
    raise KeyboardInterrupt


def _write_failed(
  manager: ocp.CheckpointManager, what: str, error: Exception
) -> errors.WriteError | None:
  """The one-line error for a save the storage refused (a full disk, permissions); None for
  any other error, which is a bug and keeps its traceback."""
  reason = errors.storage_failure(error)
  if reason is None:
    return None
  return errors.WriteError(
    f'writing {what} to {manager.directory} failed: {reason}. Earlier '
    f'complete checkpoints there are intact.'
  )


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  data_iter: grain.DatasetIterator | None,
  metrics: dict[str, float] | None,
) -> None:
  """Starts an asynchronous save of the state (and the iterator's position) at `step`.

  Raises errors.WriteError if this save cannot start or an earlier one failed in the background.
  """
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  try:
    with _interrupts_deferred():
      manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
  except (OSError, ValueError) as e:  # TensorStore's storage failures are ValueErrors
    raise _write_failed(manager, f'the checkpoint of step {step}', e) or e


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight and closes `manager`; errors.WriteError if a save failed."""
  try:
    manager.wait_until_finished()
    manager.close()  # writes the last metadata: a full disk can fail here too
  except (OSError, ValueError) as e:  # TensorStore's storage failures are ValueErrors
    with contextlib.suppress(OSError, ValueError):
      manager.close()  # waits again; the error is already in hand
    raise _write_failed(manager, 'a checkpoint', e) or e


def restore(
  manager: ocp.CheckpointManager,
  step: int,
  abstract_state: Any,
  data_iter: grain.DatasetIterator | None = None,
) -> Any:
  """Restores the state at `step` into the structure (and shardings) of `abstract_state`; a
  damaged step is a CheckpointError naming an intact one and how to resume from it."""
  step_dir = pathlib.Path(manager.directory) / str(step)
  damage = checkpoints.state_damage(step_dir) or (
    data_iter is not None and data_iter_damage(step_dir)
  )
  if damage:
    raise checkpoints.damaged_error(
      step_dir,
      damage,
      lambda good: (
        f'to resume from step {good}, move the damaged step aside (mv {step_dir} '
        f'{step_dir}.damaged) and run the same command'
      ),
    )
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    _check_process_count(manager.directory / str(step))
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError) as e:  # orbax's tree or shape mismatch; the cause is kept
    raise CheckpointError(
      f'checkpoint {manager.directory / str(step)} cannot be restored into this run (another '
      f'model config, or another number of processes for the data iterator?): '
      f'{type(e).__name__}: {str(e)[:500]}'
    ) from e
  return restored['state']


def data_iter_damage(step_dir: pathlib.Path) -> str | None:
  """What is wrong with a step's saved data-iterator positions (grain's JSON), or None."""
  for path in sorted((pathlib.Path(step_dir) / 'data_iter').glob('process_*.json')):
    try:
      json.loads(path.read_text())
    except (OSError, ValueError) as e:
      return f'{path} is unreadable ({e})'
  return None


def saved_process_count(step_dir: pathlib.Path) -> int | None:
  """How many processes wrote a checkpoint: grain saves one iterator position per process
  (`data_iter/process_<i>-of-<n>.json`). None when it holds no iterator."""
  counts = {
    int(m[1])
    for p in (pathlib.Path(step_dir) / 'data_iter').glob('process_*-of-*.json')
    if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', p.name))
  }
  return max(counts) if counts else None


def _check_process_count(step_dir: pathlib.Path) -> None:
  """A resume needs the processes that saved: each continues its own share of the data."""
  saved = saved_process_count(step_dir)
  if saved is not None and saved != jax.process_count():
    raise CheckpointError(
      f'checkpoint {step_dir} was written by a run of {saved} processes, and this run has '
      f'{jax.process_count()}: each process resumes its own share of the data. Resume with '
      f'{saved} processes (e.g. tools/local_cluster.py --num_processes={saved}), or train '
      f'anew in another --workdir.'
    )


def has_checkpoint(workdir: pathlib.Path) -> bool:
  directory = checkpoints.checkpoint_dir(workdir)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """A resume must not change what is trained: error naming the differing keys."""
  saved = run_files.load_saved_config(workdir)
  if saved is None or not has_checkpoint(workdir):
    return
  diffs = config_lib.config_mismatches(saved, json.loads(config.to_json()))
  if diffs:
    raise CheckpointError(
      f'{workdir} holds a checkpoint trained with another config; these keys differ: '
      + '; '.join(diffs)
      + '. Use a new --workdir, or restore the old values.'
    )
  run_files.check_classes_record(workdir, classes.table_of(config.data).names)


def data_changes(saved: dict, current: dict) -> list[str]:
  """What differs between two data records, per dataset, as readable phrases. A changed build
  name alone (files moved or touched) is no change: the images and splits are the same."""
  found = []
  for name in sorted(set(saved) | set(current)):
    if name not in current or name not in saved:
      found.append(f'{name}: {"no longer" if name not in current else "now"} in the data')
      continue
    old, new = saved[name], current[name]
    old_train, new_train = set(old.get('train', [])), set(new.get('train', []))
    old_test, new_test = set(old.get('test', [])), set(new.get('test', []))
    phrases = []
    if removed := (old_train | old_test) - (new_train | new_test):
      phrases.append(f'{len(removed)} images removed ({_some(removed)})')
    if added := (new_train | new_test) - (old_train | old_test):
      phrases.append(f'{len(added)} images added ({_some(added)})')
    if leaked := new_test & old_train:
      phrases.append(f'{len(leaked)} of its {len(new_test)} test images were training images')
    if moved := new_train & old_test:
      phrases.append(f'{len(moved)} former test images are now training images')
    if phrases:
      found.append(f'{name}: ' + ', '.join(phrases))
  return found


def _some(ids: set[str], most: int = 5) -> str:
  shown = sorted(ids)[:most]
  return ', '.join(shown) + (', ...' if len(ids) > most else '')


def check_resume_data(workdir: pathlib.Path, record: dict, allow_changed: bool, step: int) -> None:
  """A resume must see the images the run started on: with others, its test metrics and best
  checkpoint would mix two data sets (and steps per epoch shift). Error naming what changed,
  unless `allow_changed` (train.resume_on_changed_data), which warns and keeps the earlier
  record as `data.until_step_<step>.json`."""
  path = pathlib.Path(workdir) / run_files.DATA_FILE
  if not has_checkpoint(workdir) or not path.exists():
    return
  changes = data_changes(json.loads(path.read_text()), record)
  if not changes:
    return
  if allow_changed:
    logging.warning(
      'Resuming on changed data (train.resume_on_changed_data): %s', '; '.join(changes)
    )
    if jax.process_index() == 0:  # one writer; every process warns (its own log)
      files.write_bytes_atomic(path.with_name(f'data.until_step_{step}.json'), path.read_bytes())
    return
  raise CheckpointError(
    f'the data changed since this run started ({path}): '
    + '; '.join(changes)
    + '. Restore the data it started on, start a new --workdir, or pass '
    '--config.train.resume_on_changed_data=True to go on with the new data.'
  )
