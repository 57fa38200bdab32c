"""Start-up validation of a config: every problem reported at once, before anything compiles."""

import importlib.util
import json
import pathlib

import ml_collections

from wcsegnet_jax import classes
from wcsegnet_jax.data import raw

# configs/base.py holds every knob; a key it lacks is a typo or a stale config.
BASE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'base.py'
CHOICES = {
    'rng_impl': ('rbg', 'threefry'),
    'model.activation': ('relu', 'leaky_relu'),
    'model.block_norm': ('none', 'batch'),
    'model.upsample': ('transpose', 'nearest'),
    'model.pad_mode': ('reflect', 'constant', 'edge'),
    'model.dtype': ('float32', 'bfloat16'),
    'train.lr_schedule': ('constant', 'cosine'),
    'train.loss': ('ce', 'dice_ce'),
    'augment.fill_mode': ('nearest', 'reflect', 'constant'),
    'eval.raw_layout': ('auto', 'wbc', 'folder'),
}


class ConfigError(ValueError):
  """The config cannot run; the message lists every problem found."""


def base_config() -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location('wcsegnet_base_config', BASE_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def flatten(config, prefix: str = '') -> dict:
  """{'section.key': value} of a ConfigDict or of its JSON form (tuples as lists)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out


def with_defaults(saved: dict) -> dict:
  """A saved config's JSON with the keys added to the code since filled in at their base
  defaults (which keep the older behaviour), so older workdirs and models still load."""
  def merge(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for key, value in given.items():
      both_dicts = isinstance(value, dict) and isinstance(defaults.get(key), dict)
      out[key] = merge(defaults[key], value) if both_dicts else value
    return out
  return merge(json.loads(base_config().to_json()), saved)


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def problems(config: ml_collections.ConfigDict, device_count: int = 1,
             process_count: int = 1) -> list[str]:
  """Everything wrong with `config`, as readable lines (empty when it can run)."""
  found = []
  known, given = flatten(base_config()), flatten(config)
  found += [f'unknown config key {k!r}' for k in sorted(set(given) - set(known))]
  found += [f'missing config key {k!r}' for k in sorted(set(known) - set(given))]
  if found:
    return found
  for key, options in CHOICES.items():
    if _get(config, key) not in options:
      found.append(f'{key}={_get(config, key)!r}; expected one of {options}')
  not_xla = [f for f in config.xla_flags.split() if not f.startswith('--xla_')]
  if not_xla:
    found.append(f'xla_flags={config.xla_flags!r}: {not_xla} are not --xla_... flags')
  d, m, t = config.data, config.model, config.train
  if t.learning_rate <= 0:
    found.append(f'train.learning_rate={t.learning_rate} must be > 0')
  if t.batch_size <= 0 or t.batch_size % device_count or t.batch_size % process_count:
    found.append(f'train.batch_size={t.batch_size} must be a positive multiple of the device '
                 f'count ({device_count}) and process count ({process_count})')
  if config.eval.batch_size <= 0 or config.eval.batch_size % device_count:
    found.append(f'eval.batch_size={config.eval.batch_size} must be a positive multiple of the '
                 f'device count ({device_count})')
  if m.num_levels < 1 or m.base_width < 1 or m.blocks_per_stage < 1 or m.patch_size < 1:
    found.append('model.num_levels, base_width, blocks_per_stage and patch_size must be >= 1')
  elif d.image_size < m.patch_size * 2 ** m.num_levels:
    found.append(f'data.image_size={d.image_size} is too small for model.num_levels='
                 f'{m.num_levels} with model.patch_size={m.patch_size} (needs >= '
                 f'{m.patch_size * 2 ** m.num_levels}: one position after the poolings)')
  if m.num_classes != classes.NUM_CLASSES:
    found.append(f'model.num_classes={m.num_classes}; the label maps have {classes.NUM_CLASSES}')
  if not 0 <= m.bn_momentum < 1:
    found.append(f'model.bn_momentum={m.bn_momentum} must be in [0, 1)')
  for key in ('encoder_dropout', 'decoder_dropout', 'head_dropout'):
    if not 0 <= m[key] < 1:
      found.append(f'model.{key}={m[key]} must be in [0, 1)')
  bad_types = set(d.cell_types) - set(classes.DEFAULT_CELL_TYPES)
  if bad_types or not d.cell_types:
    found.append(f'data.cell_types={tuple(d.cell_types)}: must be a non-empty subset of '
                 f'{classes.DEFAULT_CELL_TYPES} (other types have no class in the label map)')
  bad_sets = set(d.datasets) - set(raw.WBC_SUBSETS) - {'folder'}
  if bad_sets or not d.datasets:
    found.append(f'data.datasets={tuple(d.datasets)}: expected names among '
                 f'{sorted(raw.WBC_SUBSETS) + ["folder"]}')
  if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
    found.append(f'data.mean and data.std need 3 values each, std > 0 (got {d.mean}, {d.std})')
  if not 0 <= d.test_fraction < 1:
    found.append(f'data.test_fraction={d.test_fraction} must be in [0, 1)')
  if t.class_weights and len(t.class_weights) != classes.NUM_CLASSES:
    found.append(f'train.class_weights has {len(t.class_weights)} values; expected '
                 f'{classes.NUM_CLASSES} (one per class) or () for none')
  for key in ('num_epochs', 'log_every_steps', 'eval_every_epochs', 'checkpoint_every_epochs',
              'keep_checkpoints'):
    if t[key] < 1:
      found.append(f'train.{key}={t[key]} must be >= 1')
  a = config.augment
  if d.dataset_repeats and (len(d.dataset_repeats) != len(d.datasets)
                            or min(d.dataset_repeats) < 1):
    found.append(f'data.dataset_repeats={tuple(d.dataset_repeats)}: one integer >= 1 per '
                 f'dataset of data.datasets={tuple(d.datasets)}, or () for once each')
  if not all(0 <= a[k] < 1 for k in ('brightness', 'contrast', 'saturation')) or not (
      0 <= a.hue_deg <= 180):
    found.append('augment: brightness, contrast and saturation must be in [0, 1), hue_deg in '
                 '[0, 180]')
  if a.augment_repeats < 1:
    found.append('augment.augment_repeats must be >= 1')
  if not 0 <= a.zoom < 1 or a.rotation_deg < 0 or a.shear_deg < 0 or min(
      a.width_shift, a.height_shift) < 0:
    found.append('augment: zoom must be in [0, 1) and rotation, shear and shifts >= 0')
  if t.max_steps < 0 or t.warmup_epochs < 0:
    found.append('train.max_steps and train.warmup_epochs must be >= 0')
  if any(not 0 <= s < m.num_levels for s in m.decoder_dropout_stages):
    found.append(f'model.decoder_dropout_stages={tuple(m.decoder_dropout_stages)}: stages are '
                 f'0..{m.num_levels - 1} (0 = deepest)')
  if config.input.num_workers < 0 or config.input.read_threads < 1:
    found.append('input.num_workers must be >= 0 and input.read_threads >= 1')
  return found


def validate(config: ml_collections.ConfigDict, device_count: int = 1,
             process_count: int = 1) -> None:
  """Raises ConfigError listing every problem of `config`."""
  found = problems(config, device_count, process_count)
  if found:
    raise ConfigError('invalid config:\n  ' + '\n  '.join(found))
