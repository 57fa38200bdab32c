"""The trained variables a command evaluates or predicts with: a step of a training workdir, a
checkpoint path, or the model shipped in the package; and the check that the config computes
what that model was trained to compute.
"""

import json
import pathlib

from absl import logging
import jax
import ml_collections

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.model import models
from wcsegnet_jax.model import shipped_model


PRETRAINED = 'pretrained'  # --checkpoint value naming the model shipped in the package


def pretrained_dir(checkpoint: str | int | None) -> pathlib.Path | None:
  """The shipped model's folder that `checkpoint` names: 'pretrained' (the default model) or
  'pretrained:NAME' (a shipped model by name, or a model folder's path); else None."""
  which = str(checkpoint).strip()
  if which == PRETRAINED:
    return shipped_model.model_dir()
  if which.startswith(PRETRAINED + ':'):
    return shipped_model.model_dir(which.partition(':')[2])
  return None


def resolve_checkpoint(
  workdir: str | pathlib.Path, checkpoint: str | int
) -> tuple[pathlib.Path, str]:
  """(the workdir holding the checkpoints, 'best' | 'latest' | a step) from --checkpoint.

  `checkpoint` is 'best', 'latest', a step number (of `workdir`), or a path: a step folder
  `.../checkpoints/<step>`, a `.../checkpoints` folder, or another workdir (its latest step,
  as everywhere by default: 'best' was picked by test Dice, so its test figures are optimistic).
  """
  which = str(checkpoint).strip()
  if which in ('best', 'latest') or which.isdigit():
    return pathlib.Path(workdir).expanduser().resolve(), which
  path = pathlib.Path(which).expanduser().resolve()
  if path.is_dir() and path.name.isdigit() and path.parent.name == 'checkpoints':
    return path.parent.parent, path.name
  if path.is_dir() and path.name == 'checkpoints':
    return path.parent, 'latest'
  if (path / 'checkpoints').is_dir():
    return path, 'latest'
  raise errors.CheckpointError(
    f'--checkpoint={checkpoint!r} is neither best, latest, a step number, nor a checkpoint '
    f'folder (WORKDIR/checkpoints/<step>) or a workdir holding checkpoints/'
  )


def keeps_average(workdir: str | pathlib.Path, checkpoint: str | int) -> bool:
  """Whether the run a checkpoint comes from kept the parameters' moving average (its saved
  config's train.ema_decay > 0); False for the shipped model, which holds one set of
  parameters."""
  if pretrained_dir(checkpoint) is not None:
    return False
  return _run_kept_average(resolve_checkpoint(workdir, checkpoint)[0])


def _run_kept_average(run_workdir: pathlib.Path) -> bool:
  saved = run_files.load_saved_config(run_workdir) or {}
  return saved.get('train', {}).get('ema_decay', 0.0) > 0


def reads_average(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, checkpoint: str | int
) -> bool:
  """Whether `load_variables` gives the parameters' moving average: the run kept one and
  `config.eval.ema` asks for it."""
  return bool(config.eval.ema) and keeps_average(workdir, checkpoint)


def check_classes(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
  """The model's classes (from the config it was trained with, `saved`) must be the config's:
  a CheckpointError naming both otherwise."""
  saved_data = config_lib.with_defaults(saved)['data']
  model_table = classes.class_table(saved_data['cell_types'], saved_data['cytoplasm'])
  data_table = classes.table_of(config.data)
  if model_table != data_table:
    raise errors.CheckpointError(
      f'the model of {where} has the classes {model_table.describe()} '
      f'(data.cell_types={model_table.cell_types}, data.cytoplasm={model_table.cytoplasm}), '
      f'but the config gives {data_table.describe()} (data.cell_types='
      f'{data_table.cell_types}, data.cytoplasm={data_table.cytoplasm}); pass the cell types '
      f'and cytoplasm setting it was trained with'
    )


def check_eval_config(
  workdir: pathlib.Path, config: ml_collections.ConfigDict, also_free: tuple[str, ...] = ()
) -> None:
  """The classes, model and normalisation must be those the checkpoint was trained with."""
  saved = run_files.load_saved_config(workdir)
  if saved is None:
    return
  check_classes(saved, config, str(workdir))
  diffs = config_lib.config_mismatches(
    saved,
    json.loads(config.to_json()),
    config_keys.EVAL_FREE + also_free,
    within=config_keys.EVAL_CHECKED,
  )
  if diffs:
    raise errors.CheckpointError(
      f'the checkpoint in {workdir} was trained with another config '
      f'({workdir / run_files.CONFIG_FILE}); '
      + '; '.join(diffs)
      + '. Pass the config it was trained with.'
    )


def load_variables(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  checkpoint: str | int = 'latest',
  sharding=None,
  also_free: tuple[str, ...] = (),
) -> tuple[dict, int]:
  """Restores {'params', 'batch_stats'} of a training checkpoint; returns (variables, step).

  Only those two parts of the saved train state are read (the optimizer that trained it does
  not matter); their shapes must be those of `config`'s model. The parameters are their moving
  average where the run kept one and `config.eval.ema` asks for it (`reads_average`). Arrays
  are placed with `sharding` (default: the first device).
  `checkpoint='pretrained'` takes the model shipped in the package (`shipped_model`).
  `also_free`: config keys that may differ besides `config_keys.EVAL_FREE` (`INIT_FREE` to start
  training).
  """
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if (directory := pretrained_dir(checkpoint)) is not None:
    return _pretrained_variables(config, sharding, directory, also_free)
  ckpt_workdir, which = resolve_checkpoint(workdir, checkpoint)
  directory = checkpoints.checkpoint_dir(ckpt_workdir)
  if not directory.is_dir():
    raise errors.CheckpointError(
      f'no checkpoint in {ckpt_workdir}: {directory} does not exist. Train first '
      f'(--mode=train with this workdir), or pass --checkpoint=PATH'
    )
  check_eval_config(ckpt_workdir, config, also_free)
  run_files.check_classes_record(ckpt_workdir, classes.table_of(config.data).names)
  manager = checkpoints.make_manager(ckpt_workdir, read_only=True)
  try:
    step = checkpoints.select_step(manager, which)
  finally:
    manager.close()
  try:
    averaged = bool(config.eval.ema) and _run_kept_average(ckpt_workdir)
    variables = checkpoints.restore_variables(
      directory, step, models.abstract_variables(config), sharding, ema=averaged
    )
  except errors.CheckpointError as e:
    if (ckpt_workdir / run_files.CONFIG_FILE).exists():
      raise
    raise errors.CheckpointError(
      f'{e}. {ckpt_workdir} has no {run_files.CONFIG_FILE} to say how it was trained: '
      f'pass the --config it was trained with'
    ) from None
  logging.info(
    'Restored step %d from %s%s.',
    step,
    directory,
    " (the parameters' moving average)" if averaged else '',
  )
  return variables, step


def training_ids(
  workdir: str | pathlib.Path, checkpoint: str | int
) -> tuple[dict[str, set[str]], pathlib.Path] | None:
  """({dataset: ids of the images the model trained on}, the file recording them) for a
  checkpoint: its run's data.json, or the shipped model's info.json; None where none is."""
  if (directory := pretrained_dir(checkpoint)) is not None:
    path = directory / shipped_model.INFO_FILE
    images = shipped_model.load_info(directory).get('images', {})
  else:
    path = resolve_checkpoint(workdir, checkpoint)[0] / run_files.DATA_FILE
    if not path.is_file():
      return None
    images = json.loads(path.read_text())
  return {name: set(split.get('train', [])) for name, split in images.items()}, path


def _pretrained_variables(
  config: ml_collections.ConfigDict,
  sharding,
  directory: pathlib.Path,
  also_free: tuple[str, ...] = (),
) -> tuple[dict, int]:
  """The shipped model's variables, if `config` computes what it was trained to compute."""
  shipped = shipped_model.load_config(directory)
  check_classes(shipped.to_dict(), config, f'the pretrained model ({directory})')
  diffs = config_lib.config_mismatches(
    shipped.to_dict(),
    config.to_dict(),
    config_keys.EVAL_FREE + also_free,
    within=config_keys.EVAL_CHECKED,
  )
  if diffs:
    raise errors.CheckpointError(
      f'the pretrained model ({directory}) was trained with another config: '
      + '; '.join(diffs)
      + '. Use --config=configs/pretrained.py (its own config).'
    )
  variables = shipped_model.load_variables(shipped, directory)
  step = int(shipped_model.load_info(directory).get('step', 0))
  return jax.device_put(variables, sharding), step
