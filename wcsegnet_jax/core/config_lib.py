"""Configs as data: loading a config file, the base config's defaults filled into a saved one,
flattening to dotted keys, and how two configs differ. Parsing only: `config_checks` validates
a config, `config_flags` is the commands' `--config` flag, `config_keys` says what each key is for.
"""

import difflib
import importlib.util
import json
import pathlib

import ml_collections

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import errors

# configs/base.py holds every knob; a key it lacks is a typo or a stale config.
BASE_CONFIG = pathlib.Path(__file__).resolve().parents[2] / 'configs' / 'base.py'


ConfigError = errors.ConfigError


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """`get_config()` of a config file; 'file.py:arg' passes arg, as `--config` does."""
  file, *arg = str(path).split(':', 1)
  spec = importlib.util.spec_from_file_location('wcsegnet_loaded_config', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def base_config() -> ml_collections.ConfigDict:
  return load_config_file(BASE_CONFIG)


def flatten(config, prefix: str = '') -> dict:
  """{'section.key': value} of a ConfigDict or of its JSON form (tuples as lists)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out


def unused_keys(flat: dict) -> set[str]:
  """Keys of a flattened config whose value another knob replaces, so changing it changes
  nothing: augment.zoom under a non-empty augment.zoom_range; the numbers of the colour steps
  data.color does not name."""
  unused = {'augment.zoom'} if flat.get('augment.zoom_range') else set()
  step = flat.get('data.color', 'none')
  if step != 'reinhard':
    unused.add('data.color_reference')
  if step != 'two_point':
    unused.add('data.color_anchors')
  return unused


def with_defaults(saved: dict) -> dict:
  """A saved config's JSON with the keys added to the code since filled in at their base
  defaults (which keep the older behaviour), so older workdirs and models still load.

  `model.num_classes`, a knob of older versions (always 4: the fixed map 0 background,
  1 neutrophil, 2 basophil, 3 lymphocyte), is dropped: the data's classes decide now. A saved
  config whose cell types gave that fixed map other ids than config order does is a ConfigError.
  """

  def merge(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for key, value in given.items():
      both_dicts = isinstance(value, dict) and isinstance(defaults.get(key), dict)
      out[key] = merge(defaults[key], value) if both_dicts else value
    return out

  merged = merge(json.loads(base_config().to_json()), saved)
  old_num_classes = merged.get('model', {}).pop('num_classes', None)
  if old_num_classes is not None:
    cell_types = tuple(merged.get('data', {}).get('cell_types', ()))
    if old_num_classes != 4 or cell_types != classes.DEFAULT_CELL_TYPES:
      table = classes.class_table(classes.DEFAULT_CELL_TYPES)
      raise ConfigError(
        f'a config of an older version (model.num_classes={old_num_classes}, '
        f'data.cell_types={cell_types}): its model used the fixed map {table.describe()}, '
        f'which the data.cell_types order no longer gives; train it again with this version'
      )
  return merged


def unknown_key_line(key: str, known) -> str:
  """'unknown config key K (did you mean C?)', C the closest of `known` if any is close."""
  close = difflib.get_close_matches(key, list(known), n=1)
  return f'unknown config key {key}' + (f' (did you mean {close[0]}?)' if close else '')


def config_mismatches(
  saved: dict, current: dict, free_keys=config_keys.RESUME_FREE, within: tuple[str, ...] = ('',)
) -> list[str]:
  """Keys under `within` ('' = all) and not under `free_keys` whose values differ between a
  saved and a new config.

  A key the saved config lacks (one added to the code after it was written) counts at its
  base default, the value that reproduces the older code's behaviour. A key both configs leave
  unused (`unused_keys`) may differ.
  """
  under = lambda key, prefixes: any(p in ('', key) or key.startswith(p + '.') for p in prefixes)
  saved_flat = flatten(with_defaults(saved))
  current_flat = flatten(current)
  unused = unused_keys(saved_flat) & unused_keys(current_flat)
  keys = [
    k
    for k in sorted(set(saved_flat) | set(current_flat))
    if under(k, within) and not under(k, free_keys) and k not in unused
  ]
  return [
    f'{k}: {saved_flat.get(k)!r} -> {current_flat.get(k)!r}'
    for k in keys
    if saved_flat.get(k) != current_flat.get(k)
  ]
