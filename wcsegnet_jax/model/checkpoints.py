"""Reading trained variables out of a training run's orbax checkpoints: the steps there, the best
and the latest, a damaged step told apart from an intact one, and the parameters and BatchNorm
statistics of one step, whatever optimizer trained it.

Layout: `workdir/checkpoints/<step>/{state,data_iter}` (written by `training.checkpointing`).
orbax and TensorStore load when a checkpoint is first read, not when this module is imported:
predicting with a shipped model never needs them.
"""

import json
import pathlib
import re
from typing import TYPE_CHECKING, Any, Collection

import jax

from wcsegnet_jax.core import errors

if TYPE_CHECKING:
  import orbax.checkpoint as ocp  # loaded by the functions that read a checkpoint (~1 s)

BEST_METRIC = 'test_dice'
CheckpointError = errors.CheckpointError


# The train state's field holding the parameters' moving average (train.TrainState).
EMA_KEY = 'ema_params'


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir).expanduser().resolve() / 'checkpoints'


def make_manager(
  workdir: str | pathlib.Path, keep: int = 3, read_only: bool = False
) -> 'ocp.CheckpointManager':
  """A manager keeping the last `keep` checkpoints and the best one by test Dice."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import checkpoint_managers  # pylint: disable=g-import-not-at-top

  policy = checkpoint_managers.AnyPreservationPolicy(
    [
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
      ),
    ]
  )
  # Step folders made in the calling thread: when orbax makes them in its background threads, a
  # failure there (checkpoints/ is a file, a full disk) leaves its other threads waiting 20
  # minutes for a signal that never comes, and the process cannot exit.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=lambda m: m[BEST_METRIC],
    best_mode='max',
    enable_async_checkpointing=not read_only,
    read_only=read_only,
    create=not read_only,
    async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_names=('state', 'data_iter')
  )


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
    return None  # not the OCDBT format: left to orbax
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  wanted = lambda key: parts is None or re.split(r'[./]', key.decode(), maxsplit=1)[0] in parts
  try:
    store = ts.KvStore.open({'driver': 'ocdbt', 'base': f'file://{state}'}).result()
    keys = [key for key in store.list().result() if wanted(key)]
    for key in keys:
      if store.read(key).result().state != 'value':
        return f'{key.decode()} in {state} is missing'
  except ValueError as e:  # TensorStore's errors: NOT_FOUND, DATA_LOSS, OUT_OF_RANGE ...
    return str(e).splitlines()[0][:300]
  return None if keys else f'{state} holds none of {sorted(parts or ["its arrays"])}'


def damaged_error(
  step_dir: pathlib.Path, damage: str, fix, parts: Collection[str] | None = None
) -> CheckpointError:
  """The error for a damaged step: what is wrong, the newest intact step and `fix(that step)`
  (how to use it); nothing is deleted."""
  steps = sorted(
    (int(p.name) for p in step_dir.parent.iterdir() if p.name.isdigit() and p != step_dir),
    reverse=True,
  )
  good = next((s for s in steps if state_damage(step_dir.parent / str(s), parts) is None), None)
  what = (
    f'step {good} is intact: {fix(good)}'
    if good is not None
    else 'no other step there is intact: train anew in another --workdir'
  )
  return CheckpointError(
    f'checkpoint {step_dir} is damaged ({damage}); {what}. Nothing was deleted.'
  )


def _flat_shapes(tree) -> dict[str, tuple]:
  return {
    '/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def shape_mismatches(saved: Any, wanted: Any) -> list[str]:
  """How two trees of arrays differ: names missing on either side, or shapes that differ."""
  saved, wanted = _flat_shapes(saved), _flat_shapes(wanted)
  found = [
    f'{k} {saved[k]} in the checkpoint, {wanted[k]} here'
    for k in sorted(saved.keys() & wanted.keys())
    if saved[k] != wanted[k]
  ]
  found += [f'{k} missing in the checkpoint' for k in sorted(wanted.keys() - saved.keys())]
  found += [f'{k} in the checkpoint only' for k in sorted(saved.keys() - wanted.keys())]
  return found


def restore_variables(
  directory: pathlib.Path, step: int, abstract: dict, sharding, ema: bool = False
) -> dict:
  """Only `abstract`'s parts (parameters, BatchNorm statistics) of a step's train state: what
  evaluation and prediction need, whatever optimizer trained it; with `ema`, the parameters'
  moving average (train.ema_decay) read as the parameters. Shapes are compared first, so a
  checkpoint of another model is one readable error, not orbax's tree dump."""
  path = pathlib.Path(directory) / str(step) / 'state'
  # Stored names -> the variables' names: the average is read as the parameters.
  names = {k: (EMA_KEY if ema and k == 'params' else k) for k in abstract}
  if damage := state_damage(path.parent, set(names.values())):
    raise damaged_error(
      path.parent,
      damage,
      lambda good: f'pass --checkpoint={path.parent.parent / str(good)}',
      set(names.values()),
    )
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  saved = getattr(metadata, 'item_metadata', metadata)
  saved = getattr(saved, 'tree', saved)
  if saved is None:  # orbax could not read what state_damage read: say so, not AttributeError
    raise CheckpointError(
      f'the metadata of checkpoint {path.parent} cannot be read (orbax '
      f'{ocp.__version__}); pass another --checkpoint'
    )
  if ema and not saved.get(EMA_KEY):
    raise CheckpointError(
      f'checkpoint {path.parent} holds no moving average of the parameters '
      f'({EMA_KEY}) though its run kept one; evaluate its parameters with '
      f'--config.eval.ema=False'
    )
  diffs = shape_mismatches({k: saved.get(names[k], {}) for k in abstract}, abstract)
  if diffs:
    more = f' (and {len(diffs) - 4} more)' if len(diffs) > 4 else ''
    raise CheckpointError(
      f'checkpoint {path.parent} holds another model than this config: '
      + '; '.join(diffs[:4])
      + more
    )
  stored = {names[k]: v for k, v in abstract.items()}
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), stored)
  restored = checkpointer.restore(
    path, args=ocp.args.PyTreeRestore(item=stored, restore_args=restore_args, partial_restore=True)
  )
  return {k: restored[names[k]] for k in abstract}


def select_step(manager: 'ocp.CheckpointManager', which: str) -> int:
  """'best' | 'latest' | a step number -> the step to restore (clear error if none)."""
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(
      f'no checkpoint in {manager.directory}: train first, or pass --checkpoint=PATH'
    )
  if which == 'latest':
    return manager.latest_step()
  if which == 'best':
    best = manager.best_step()
    if best is None:  # the latest, silently, would not be what was asked
      raise CheckpointError(
        f'no checkpoint in {manager.directory} was scored on a test split '
        f'(data.test_fraction=0?), so none is best: pass --checkpoint=latest '
        f'or a step ({manager.all_steps()})'
      )
    return best
  if str(which).isdigit() and int(which) in steps:
    return int(which)
  raise CheckpointError(f'checkpoint {which!r} not in {manager.directory} (steps: {steps})')
