"""The model predict uses: a shipped one (by name or folder), or a step of a training workdir or a
checkpoint path, with the config it was trained with."""

import pathlib

import ml_collections

from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.model import restore
from wcsegnet_jax.model import shipped_model


def load_workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config training saved in `workdir` (lists where the config had tuples)."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  path = workdir / run_files.CONFIG_FILE
  try:
    saved = run_files.load_saved_config(workdir)
  except ValueError as e:
    raise errors.CheckpointError(f'{path} is not a readable config: {e}') from None
  if saved is None:
    raise errors.CheckpointError(
      f'{path} does not exist: {workdir} is not a training workdir (train first with '
      f'--workdir={workdir}, or point --workdir at one)'
    )
  return ml_collections.ConfigDict(config_lib.with_defaults(saved))


def load_model(workdir: str | None, which: str | None = None, model: str | None = None):
  """(config, variables, description, folder) of the model to predict with: a shipped one
  (`model`, a name or a model folder; `which` 'pretrained[:NAME]'; or neither a workdir nor a
  checkpoint: the default), else a training checkpoint (`_workdir_model`); the folder is where
  its cell typer would be (`cell_typing.load_typer`)."""
  if model is not None and (workdir or which):
    raise errors.CheckpointError(
      f'--model={model} names a shipped model: give it, or --workdir/--checkpoint, not both'
    )
  directory = restore.pretrained_dir(which) if which else None
  if directory is None and not workdir and which is None:
    directory = shipped_model.model_dir(model)
  if directory is not None:
    config = shipped_model.load_config(directory)
    variables = shipped_model.load_variables(config, directory)
    return config, variables, f'the pretrained model in {directory}', directory
  return _workdir_model(workdir, which)


def _workdir_model(workdir: str | None, which: str | None):
  """(config, variables, description, workdir) of a training checkpoint: `which` of `workdir`,
  or a checkpoint path; None is the workdir config's `eval.checkpoint`."""
  if which is None:
    which = str(load_workdir_config(workdir).eval.checkpoint).strip()
  ckpt_workdir, _ = restore.resolve_checkpoint(workdir or '.', which)
  workdir = workdir or ckpt_workdir
  config_dir = ckpt_workdir if (ckpt_workdir / run_files.CONFIG_FILE).is_file() else workdir
  config = load_workdir_config(config_dir)
  variables, step = restore.load_variables(config, workdir, which)
  return config, variables, f'step {step} of {ckpt_workdir}', ckpt_workdir
