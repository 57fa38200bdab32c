"""The pretrained model shipped in the package (`wcsegnet_jax/pretrained/`): export and load.

A lab can predict with it minutes after installing, with no training and no network. The folder
holds three files, written by `tools/build_pretrained.py`:
  config.json        the full training config (the model, normalisation and image size)
  variables.msgpack  parameters and BatchNorm statistics (flax msgpack; float16 where the values
                     fit, which halves the file and changes no prediction we measured)
  info.json          the file's SHA-256, the class of each output channel (`classes`), the test
                     metrics of the stored weights, the images that trained it, the command that
                     rebuilt it, and the data's licence
"""

import hashlib
import json
import pathlib
from typing import Any

from flax import serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.model import models

PRETRAINED_ROOT = pathlib.Path(__file__).resolve().parents[1] / 'pretrained'
# The shipped models, one folder each: 'differential' (all five types and the cytoplasm, made
# for other labs' smears: configs/cross_lab.py) and 'paper' (the paper's three types).
MODEL_NAMES = ('differential', 'paper')
DEFAULT_MODEL = 'differential'
CONFIG_FILE = 'config.json'
VARIABLES_FILE = 'variables.msgpack'
INFO_FILE = 'info.json'
CARD_FILE = 'README.md'
FLOAT16_MAX = float(np.finfo(np.float16).max)


class PretrainedModelError(errors.CheckpointError):
  """A shipped (or exported) model folder is missing a file or holds a corrupt one."""


def model_dir(model: str | pathlib.Path | None = None) -> pathlib.Path:
  """The folder of a shipped model by name (None: the default), or a model folder's path (as
  tools/build_pretrained.py --output writes one)."""
  model = DEFAULT_MODEL if model is None or str(model) == '' else str(model)
  if model in MODEL_NAMES:
    return PRETRAINED_ROOT / model
  path = pathlib.Path(model).expanduser()
  if (path / CONFIG_FILE).is_file() and (path / VARIABLES_FILE).is_file():
    return path.resolve()
  raise PretrainedModelError(
    f'--model={model}: neither a shipped model ({", ".join(MODEL_NAMES)}) nor a model folder '
    f'holding {CONFIG_FILE} and {VARIABLES_FILE} (tools/build_pretrained.py --output writes '
    f'one)'
  )


PRETRAINED_DIR = model_dir()


def _fix() -> str:
  return 'reinstall wcsegnet_jax, or rebuild the model with tools/build_pretrained.py'


def _storage_array(x: Any) -> np.ndarray:
  """float16 where every value fits (finite, |v| <= 65504), else float32."""
  x = np.asarray(x, np.float32)
  if np.all(np.isfinite(x)) and np.max(np.abs(x), initial=0.0) <= FLOAT16_MAX:
    return x.astype(np.float16)
  return x


def as_stored(variables: dict) -> dict:
  """{'params', 'batch_stats'} rounded as `export` stores them, back in float32: the weights
  whose metrics the shipped model reports."""
  stored = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return jax.tree.map(lambda x: jnp.asarray(_storage_array(x), jnp.float32), jax.device_get(stored))


def export(
  config: ml_collections.ConfigDict, variables: dict, out_dir: str | pathlib.Path, info: dict
) -> pathlib.Path:
  """Writes config, variables and info (with the variables' SHA-256) into `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stored = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  data = serialization.msgpack_serialize(jax.tree.map(_storage_array, jax.device_get(stored)))
  files.write_bytes_atomic(out_dir / VARIABLES_FILE, data)
  config = ml_collections.ConfigDict(config.to_dict())
  for key in config_keys.MACHINE_PATHS:  # where the data lay on the machine that built it
    section, name = key.split('.')
    config[section][name] = ''
  files.write_text_atomic(out_dir / CONFIG_FILE, config.to_json(indent=2, sort_keys=True))
  info = dict(
    info,
    classes=list(classes.table_of(config.data).names),
    variables_sha256=hashlib.sha256(data).hexdigest(),
    variables_bytes=len(data),
    parameters=models.count_params(stored['params']),
  )
  files.write_json_atomic(out_dir / INFO_FILE, info)
  files.write_text_atomic(out_dir / CARD_FILE, model_card(info))
  return out_dir


def model_card(info: dict) -> str:
  """A short README for the model folder, from its info.json."""
  lines = [
    f'# Pretrained model: {info.get("name", "?")}',
    '',
    'Written by `tools/build_pretrained.py`; do not edit by hand. '
    f'{info.get("parameters", 0):,} parameters'
    + (' (their moving average over training)' if info.get('averaged_parameters') else '')
    + f', step {info.get("step", "?")}, '
    f'built {info.get("built", "?")} on {info.get("machine", "?")}.',
    '',
    f'Rebuild: `{info.get("command", "?")}`',
    '',
  ]
  tests = info.get('test_metrics', {})
  if tests:
    lines += [
      'Test-split metrics of the stored weights (nucleus vs background as the paper; '
      'cell accuracy: majority class of the predicted nucleus pixels):',
      '',
      '| dataset | images | Dice | mIoU | accuracy | precision | cell accuracy |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ]
    for name, m in tests.items():
      lines.append(
        f'| {name} | {m["n_images"]} | {m["dice"]:.4f} | {m["miou"]:.4f} | '
        f'{m["accuracy"]:.4f} | {m["precision"]:.4f} | {m["cell_accuracy"]:.4f} |'
      )
    lines.append('')
  images = info.get('images', {})
  if images:
    lines += [
      'Trained on the train splits ('
      + ', '.join(f'{name}: {len(split.get("train", []))} images' for name, split in images.items())
      + '); the ids of every split are in info.json.',
      '',
    ]
  if 'licence' in info:
    lines += ['Licence: ' + info['licence'], '']
  return '\n'.join(lines)


def _read(path: pathlib.Path) -> bytes:
  if not path.is_file():
    raise PretrainedModelError(f'{path}: the pretrained model file is missing; {_fix()}')
  return path.read_bytes()


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(_read(path))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PretrainedModelError(f'{path}: not valid JSON ({e}); {_fix()}') from None


def load_config(directory: str | pathlib.Path = PRETRAINED_DIR) -> ml_collections.ConfigDict:
  """The config the model in `directory` was trained with (validated)."""
  path = pathlib.Path(directory) / CONFIG_FILE
  try:
    config = ml_collections.ConfigDict(config_lib.with_defaults(_read_json(path)))
    found = config_checks.problems(config)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # not a config's shape
    found = [f'{type(e).__name__}: {e}']
  if found:
    raise PretrainedModelError(f'{path}: not a usable config ({"; ".join(found)}); {_fix()}')
  return config


def load_info(directory: str | pathlib.Path = PRETRAINED_DIR) -> dict:
  path = pathlib.Path(directory) / INFO_FILE
  info = _read_json(path)
  if not isinstance(info, dict):
    raise PretrainedModelError(f'{path}: not a JSON object; {_fix()}')
  return info


def load_variables(
  config: ml_collections.ConfigDict, directory: str | pathlib.Path = PRETRAINED_DIR
) -> dict:
  """Parameters and BatchNorm statistics as float32, checked against the checksum and shapes."""
  directory = pathlib.Path(directory)
  path = directory / VARIABLES_FILE
  data = _read(path)
  expected = load_info(directory).get('variables_sha256')
  if not expected:
    raise PretrainedModelError(
      f'{directory / INFO_FILE}: has no variables_sha256 to check {path} against; {_fix()}'
    )
  if hashlib.sha256(data).hexdigest() != expected:
    raise PretrainedModelError(
      f'{path}: corrupt (its SHA-256 is not the one in {directory / INFO_FILE}); {_fix()}'
    )
  # The checksum covers the weights only: a config.json whose cell types were reordered would
  # relabel every cell. info.json records the classes the weights output.
  recorded, names = load_info(directory).get('classes'), list(classes.table_of(config.data).names)
  if recorded is not None and list(recorded) != names:
    raise PretrainedModelError(
      f'{directory / INFO_FILE}: the model outputs the classes {", ".join(map(str, recorded))}, '
      f'but {directory / CONFIG_FILE} gives {", ".join(names)}: its data.cell_types (or '
      f'data.cytoplasm) were changed; {_fix()}'
    )
  try:
    stored = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types on bad bytes
    raise PretrainedModelError(f'{path}: unreadable ({type(e).__name__}); {_fix()}') from None
  want = models.abstract_variables(config)
  got_shapes = jax.tree.map(np.shape, stored)
  want_shapes = jax.tree.map(lambda x: tuple(x.shape), want)
  if got_shapes != want_shapes:
    raise PretrainedModelError(
      f'{path}: its arrays do not fit the model of {directory / CONFIG_FILE}; {_fix()}'
    )
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stored)


def load(
  directory: str | pathlib.Path = PRETRAINED_DIR,
) -> tuple[ml_collections.ConfigDict, dict, dict]:
  """(config, variables, info) of the model in `directory` (default: the shipped one)."""
  config = load_config(directory)
  return config, load_variables(config, directory), load_info(directory)
