"""orbax checkpoints of the train state and the grain iterator, for exact resume and evaluation.

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
from typing import Any, Collection, Iterator

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
import tensorstore as ts

from wcsegnet_jax import config_lib
from wcsegnet_jax import errors
from wcsegnet_jax import files

BEST_METRIC = 'test_dice'
CONFIG_FILE = 'config.json'
DATA_FILE = 'data.json'   # the images a run started on (input_pipeline.data_record)
# A resume may change only these keys (and the keys under them): where the data lives, how fast
# it is read, how long and how often things happen, and evaluation. Every other key, including
# any added later, must keep its value, or the resumed run would silently train something else.
# More epochs may be added to a finished run (a cosine schedule then stretches its tail).
RESUME_FREE = ('name', 'xla_flags', 'data.raw_dir', 'data.tfds_dir', 'data.folder_dir',
               'input.read_threads', 'input.prefetch', 'input.worker_buffer_size',
               'train.num_epochs', 'train.max_steps', 'train.log_every_steps',
               'train.eval_every_epochs', 'train.checkpoint_every_epochs',
               'train.keep_checkpoints', 'train.progress_bar', 'train.distributed',
               'train.resume_on_changed_data', 'eval', 'typer')


CheckpointError = errors.CheckpointError


# The train state's field holding the parameters' moving average (train.TrainState).
EMA_KEY = 'ema_params'


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).expanduser().resolve() / 'checkpoints'


def make_manager(workdir: str | pathlib.Path, keep: int = 3,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A manager keeping the last `keep` checkpoints and the best one by test Dice."""
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  # Step folders made in the calling thread: when orbax makes them in its background threads, a
  # failure there (checkpoints/ is a file, a full disk) leaves its other threads waiting 20
  # minutes for a signal that never comes, and the process cannot exit.
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, best_fn=lambda m: m[BEST_METRIC], best_mode='max',
      enable_async_checkpointing=not read_only, read_only=read_only, create=not read_only,
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=('state', 'data_iter'))


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
  """Ctrl-C (or SIGTERM, when the command stops on it) during the block is raised when it ends,
  so a save is started whole or not at all."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  watched = [sig for sig in (signal.SIGINT, signal.SIGTERM)
             if callable(signal.getsignal(sig))]   # only signals Python code handles
  caught = []
  previous = {sig: signal.signal(sig, lambda *_: caught.append(True)) for sig in watched}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if caught:
    raise KeyboardInterrupt


def _write_failed(manager: ocp.CheckpointManager, what: str,
                  error: Exception) -> errors.WriteError | None:
  """The one-line error for a save the storage refused (a full disk, permissions); None for
  any other error, which is a bug and keeps its traceback."""
  reason = errors.storage_failure(error)
  if reason is None:
    return None
  return errors.WriteError(f'writing {what} to {manager.directory} failed: {reason}. Earlier '
                           f'complete checkpoints there are intact.')


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: grain.DatasetIterator | None, metrics: dict[str, float] | None) -> None:
  """Starts an asynchronous save of the state (and the iterator's position) at `step`.

  Raises errors.WriteError if this save cannot start or an earlier one failed in the background.
  """
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  try:
    with _interrupts_deferred():
      manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)
  except (OSError, ValueError) as e:   # TensorStore's storage failures are ValueErrors
    raise _write_failed(manager, f'the checkpoint of step {step}', e) or e


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight and closes `manager`; errors.WriteError if a save failed."""
  try:
    manager.wait_until_finished()
    manager.close()   # writes the last metadata: a full disk can fail here too
  except (OSError, ValueError) as e:   # TensorStore's storage failures are ValueErrors
    with contextlib.suppress(OSError, ValueError):
      manager.close()   # waits again; the error is already in hand
    raise _write_failed(manager, 'a checkpoint', e) or e


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: grain.DatasetIterator | None = None) -> Any:
  """Restores the state at `step` into the structure (and shardings) of `abstract_state`; a
  damaged step is a CheckpointError naming an intact one and how to resume from it."""
  step_dir = pathlib.Path(manager.directory) / str(step)
  damage = state_damage(step_dir) or (data_iter is not None and data_iter_damage(step_dir))
  if damage:
    raise damaged_error(step_dir, damage, lambda good: (
        f'to resume from step {good}, move the damaged step aside (mv {step_dir} '
        f'{step_dir}.damaged) and run the same command'))
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    _check_process_count(manager.directory / str(step))
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError) as e:   # orbax's tree or shape mismatch; the cause is kept
    raise CheckpointError(
        f'checkpoint {manager.directory / str(step)} cannot be restored into this run (another '
        f'model config, or another number of processes for the data iterator?): '
        f'{type(e).__name__}: {str(e)[:500]}') from e
  return restored['state']


def state_damage(step_dir: pathlib.Path, parts: Collection[str] | None = None) -> str | None:
  """What is wrong with a step's saved train state, or None when it reads back whole (only its
  top-level `parts`, if given). Read with TensorStore directly: a truncated, deleted or missing
  file becomes one phrase, where a restore through orbax prints pages of asynchronous errors."""
  state = pathlib.Path(step_dir) / 'state'
  metadata = state / '_METADATA'
  if not state.is_dir() or not metadata.is_file():
    return f'{state if not state.is_dir() else metadata} is missing'
  try:
    json.loads(metadata.read_text())
  except (OSError, ValueError) as e:
    return f'{metadata} is unreadable ({e})'
  if not (state / 'manifest.ocdbt').is_file():
    return None   # not the OCDBT format: left to orbax
  wanted = lambda key: parts is None or re.split(r'[./]', key.decode(), maxsplit=1)[0] in parts
  try:
    store = ts.KvStore.open({'driver': 'ocdbt', 'base': f'file://{state}'}).result()
    keys = [key for key in store.list().result() if wanted(key)]
    for key in keys:
      if store.read(key).result().state != 'value':
        return f'{key.decode()} in {state} is missing'
  except ValueError as e:   # TensorStore's errors: NOT_FOUND, DATA_LOSS, OUT_OF_RANGE ...
    return str(e).splitlines()[0][:300]
  return None if keys else f'{state} holds none of {sorted(parts or ["its arrays"])}'


def data_iter_damage(step_dir: pathlib.Path) -> str | None:
  """What is wrong with a step's saved data-iterator positions (grain's JSON), or None."""
  for path in sorted((pathlib.Path(step_dir) / 'data_iter').glob('process_*.json')):
    try:
      json.loads(path.read_text())
    except (OSError, ValueError) as e:
      return f'{path} is unreadable ({e})'
  return None


def damaged_error(step_dir: pathlib.Path, damage: str, fix, parts: Collection[str] | None = None
                  ) -> CheckpointError:
  """The error for a damaged step: what is wrong, the newest intact step and `fix(that step)`
  (how to use it); nothing is deleted."""
  steps = sorted((int(p.name) for p in step_dir.parent.iterdir()
                  if p.name.isdigit() and p != step_dir), reverse=True)
  good = next((s for s in steps if state_damage(step_dir.parent / str(s), parts) is None), None)
  what = (f'step {good} is intact: {fix(good)}' if good is not None else
          'no other step there is intact: train anew in another --workdir')
  return CheckpointError(f'checkpoint {step_dir} is damaged ({damage}); {what}. Nothing was '
                         f'deleted.')


def saved_process_count(step_dir: pathlib.Path) -> int | None:
  """How many processes wrote a checkpoint: grain saves one iterator position per process
  (`data_iter/process_<i>-of-<n>.json`). None when it holds no iterator."""
  counts = {int(m[1]) for p in (pathlib.Path(step_dir) / 'data_iter').glob('process_*-of-*.json')
            if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', p.name))}
  return max(counts) if counts else None


def _check_process_count(step_dir: pathlib.Path) -> None:
  """A resume needs the processes that saved: each continues its own share of the data."""
  saved = saved_process_count(step_dir)
  if saved is not None and saved != jax.process_count():
    raise CheckpointError(
        f'checkpoint {step_dir} was written by a run of {saved} processes, and this run has '
        f'{jax.process_count()}: each process resumes its own share of the data. Resume with '
        f'{saved} processes (e.g. tools/local_cluster.py --num_processes={saved}), or train '
        f'anew in another --workdir.')


def _flat_shapes(tree) -> dict[str, tuple]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def shape_mismatches(saved: Any, wanted: Any) -> list[str]:
  """How two trees of arrays differ: names missing on either side, or shapes that differ."""
  saved, wanted = _flat_shapes(saved), _flat_shapes(wanted)
  found = [f'{k} {saved[k]} in the checkpoint, {wanted[k]} here'
           for k in sorted(saved.keys() & wanted.keys()) if saved[k] != wanted[k]]
  found += [f'{k} missing in the checkpoint' for k in sorted(wanted.keys() - saved.keys())]
  found += [f'{k} in the checkpoint only' for k in sorted(saved.keys() - wanted.keys())]
  return found


def restore_variables(directory: pathlib.Path, step: int, abstract: dict, sharding,
                      ema: bool = False) -> dict:
  """Only `abstract`'s parts (parameters, BatchNorm statistics) of a step's train state: what
  evaluation and prediction need, whatever optimizer trained it; with `ema`, the parameters'
  moving average (train.ema_decay) read as the parameters. Shapes are compared first, so a
  checkpoint of another model is one readable error, not orbax's tree dump."""
  path = pathlib.Path(directory) / str(step) / 'state'
  # Stored names -> the variables' names: the average is read as the parameters.
  names = {k: (EMA_KEY if ema and k == 'params' else k) for k in abstract}
  if damage := state_damage(path.parent, set(names.values())):
    raise damaged_error(path.parent, damage, lambda good: (
        f'pass --checkpoint={path.parent.parent / str(good)}'), set(names.values()))
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  saved = getattr(metadata, 'item_metadata', metadata)
  saved = getattr(saved, 'tree', saved)
  if saved is None:   # orbax could not read what state_damage read: say so, not AttributeError
    raise CheckpointError(f'the metadata of checkpoint {path.parent} cannot be read (orbax '
                          f'{ocp.__version__}); pass another --checkpoint')
  if ema and not saved.get(EMA_KEY):
    raise CheckpointError(f'checkpoint {path.parent} holds no moving average of the parameters '
                          f'({EMA_KEY}) though its run kept one; evaluate its parameters with '
                          f'--config.eval.ema=False')
  diffs = shape_mismatches({k: saved.get(names[k], {}) for k in abstract}, abstract)
  if diffs:
    more = f' (and {len(diffs) - 4} more)' if len(diffs) > 4 else ''
    raise CheckpointError(f'checkpoint {path.parent} holds another model than this config: '
                          + '; '.join(diffs[:4]) + more)
  stored = {names[k]: v for k, v in abstract.items()}
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), stored)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=stored, restore_args=restore_args, partial_restore=True))
  return {k: restored[names[k]] for k in abstract}


def select_step(manager: ocp.CheckpointManager, which: str) -> int:
  """'best' | 'latest' | a step number -> the step to restore (clear error if none)."""
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f'no checkpoint in {manager.directory}: train first, or pass '
                          f'--checkpoint=PATH')
  if which == 'latest':
    return manager.latest_step()
  if which == 'best':
    best = manager.best_step()
    if best is None:   # the latest, silently, would not be what was asked
      raise CheckpointError(f'no checkpoint in {manager.directory} was scored on a test split '
                            f'(data.test_fraction=0?), so none is best: pass --checkpoint=latest '
                            f'or a step ({manager.all_steps()})')
    return best
  if str(which).isdigit() and int(which) in steps:
    return int(which)
  raise CheckpointError(f'checkpoint {which!r} not in {manager.directory} (steps: {steps})')


def config_mismatches(saved: dict, current: dict, free_keys=RESUME_FREE,
                      within: tuple[str, ...] = ('',)) -> list[str]:
  """Keys under `within` ('' = all) and not under `free_keys` whose values differ between a
  saved and a new config.

  A key the saved config lacks (one added to the code after it was written) counts at its
  base default, the value that reproduces the older code's behaviour. A key both configs leave
  unused (`config_lib.unused_keys`) may differ.
  """
  under = lambda key, prefixes: any(p in ('', key) or key.startswith(p + '.') for p in prefixes)
  saved_flat = config_lib.flatten(config_lib.with_defaults(saved))
  current_flat = config_lib.flatten(current)
  unused = config_lib.unused_keys(saved_flat) & config_lib.unused_keys(current_flat)
  keys = [k for k in sorted(set(saved_flat) | set(current_flat))
          if under(k, within) and not under(k, free_keys) and k not in unused]
  return [f'{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}' for k in keys
          if saved_flat.get(k) != current_flat.get(k)]


def load_saved_config(workdir: pathlib.Path) -> dict | None:
  """The config a workdir was trained with (its config.json), or None."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def has_checkpoint(workdir: pathlib.Path) -> bool:
  directory = checkpoint_dir(workdir)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """A resume must not change what is trained: error naming the differing keys."""
  saved = load_saved_config(workdir)
  if saved is None or not has_checkpoint(workdir):
    return
  diffs = config_mismatches(saved, json.loads(config.to_json()))
  if diffs:
    raise CheckpointError(
        f'{workdir} holds a checkpoint trained with another config; these keys differ: '
        + '; '.join(diffs) + '. Use a new --workdir, or restore the old values.')


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


def check_resume_data(workdir: pathlib.Path, record: dict, allow_changed: bool,
                      step: int) -> None:
  """A resume must see the images the run started on: with others, its test metrics and best
  checkpoint would mix two data sets (and steps per epoch shift). Error naming what changed,
  unless `allow_changed` (train.resume_on_changed_data), which warns and keeps the earlier
  record as `data.until_step_<step>.json`."""
  path = pathlib.Path(workdir) / DATA_FILE
  if not has_checkpoint(workdir) or not path.exists():
    return
  changes = data_changes(json.loads(path.read_text()), record)
  if not changes:
    return
  if allow_changed:
    logging.warning('Resuming on changed data (train.resume_on_changed_data): %s',
                    '; '.join(changes))
    if jax.process_index() == 0:   # one writer; every process warns (its own log)
      files.write_bytes_atomic(path.with_name(f'data.until_step_{step}.json'), path.read_bytes())
    return
  raise CheckpointError(
      f'the data changed since this run started ({path}): ' + '; '.join(changes) +
      '. Restore the data it started on, start a new --workdir, or pass '
      '--config.train.resume_on_changed_data=True to go on with the new data.')


def write_data_record(workdir: pathlib.Path, record: dict) -> None:
  files.write_json_atomic(pathlib.Path(workdir) / DATA_FILE, record)


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Saves the resolved config as JSON (atomically: write then rename)."""
  files.write_text_atomic(workdir / CONFIG_FILE, config.to_json(indent=2, sort_keys=True))
