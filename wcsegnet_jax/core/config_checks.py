"""Start-up validation of a config: every problem reported at once, before anything compiles."""

import math

import ml_collections

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors

ConfigError = errors.ConfigError


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def problems(
  config: ml_collections.ConfigDict, device_count: int = 1, process_count: int = 1
) -> list[str]:
  """Everything wrong with `config`, as readable lines (empty when it can run)."""
  found = []
  known, given = config_lib.flatten(config_lib.base_config()), config_lib.flatten(config)
  found += [config_lib.unknown_key_line(k, known) for k in sorted(set(given) - set(known))]
  found += [f'missing config key {k!r}' for k in sorted(set(known) - set(given))]
  if found:
    return found
  for key, options in config_keys.CHOICES.items():
    if _get(config, key) not in options:
      found.append(f'{key}={_get(config, key)!r}; expected one of {options}')
  not_xla = [f for f in config.xla_flags.split() if not f.startswith('--xla_')]
  if not_xla:
    found.append(f'xla_flags={config.xla_flags!r}: {not_xla} are not --xla_... flags')
  d, m, t = config.data, config.model, config.train
  if t.learning_rate <= 0:
    found.append(f'train.learning_rate={t.learning_rate} must be > 0')
  if t.batch_size <= 0 or t.batch_size % device_count or t.batch_size % process_count:
    found.append(
      f'train.batch_size={t.batch_size} must be a positive multiple of the device '
      f'count ({device_count}) and process count ({process_count})'
    )
  if config.eval.batch_size <= 0:  # evaluation runs on one local device: any size works
    found.append(f'eval.batch_size={config.eval.batch_size} must be > 0')
  if m.num_levels < 1 or m.base_width < 1 or m.blocks_per_stage < 1 or m.patch_size < 1:
    found.append('model.num_levels, base_width, blocks_per_stage and patch_size must be >= 1')
  elif d.image_size < m.patch_size * 2**m.num_levels:
    found.append(
      f'data.image_size={d.image_size} is too small for model.num_levels='
      f'{m.num_levels} with model.patch_size={m.patch_size} (needs >= '
      f'{m.patch_size * 2**m.num_levels}: one position after the poolings)'
    )
  if d.fields_dir and not config.train.init_from:
    found.append(
      f'data.fields_dir={d.fields_dir!r} needs train.init_from: the model that labels '
      f'its typed cells and that fine-tuning starts from (e.g. pretrained)'
    )
  y = config.typer
  if min(y.encoder_stages, y.decoder_stages) < 0:
    found.append(
      f'typer.encoder_stages={y.encoder_stages} and typer.decoder_stages='
      f'{y.decoder_stages} must be >= 0 (both 0: colour and shape only)'
    )
  if not 1 <= y.field_views <= 4:
    found.append(f'typer.field_views={y.field_views} must be 1 to 4 (as cut, mirrored, ...)')
  if y.crop_color not in ('crop', 'field'):
    found.append(f"typer.crop_color={y.crop_color!r} must be 'crop' or 'field'")
  if y.views < 1 or y.l2 < 0 or y.field_weight <= 0 or not 0 <= y.uncertain_below < 1:
    found.append(
      f'typer: views ({y.views}) must be >= 1, l2 ({y.l2}) >= 0, field_weight '
      f'({y.field_weight}) > 0 and uncertain_below ({y.uncertain_below}) in [0, 1)'
    )
  if config.eval.central_cell_radius < 0:
    found.append(
      f'eval.central_cell_radius={config.eval.central_cell_radius} must be >= 0 (0: off)'
    )
  if d.fields_scale < 0:
    found.append(f'data.fields_scale={d.fields_scale} must be > 0, or 0 to estimate it')
  reference = tuple(d.color_reference)
  if len(reference) != 6 or min(reference[3:], default=0) <= 0:
    found.append(
      f'data.color_reference={reference} must be 6 numbers: the L, a, b means, then '
      f'their stds (> 0)'
    )
  anchors = tuple(d.get('color_anchors', ()))
  if d.color == 'two_point' and (len(anchors) != 6 or anchors[0] <= anchors[3]):
    found.append(
      f"data.color_anchors={anchors} must be 6 numbers: the background's L, a, b, then the "
      f"nucleus' (the background the brighter)"
    )
  if m.refine_width < 0:
    found.append(f'model.refine_width={m.refine_width} must be >= 0 (0 = no refinement)')
  if not 0 <= m.bn_momentum < 1:
    found.append(f'model.bn_momentum={m.bn_momentum} must be in [0, 1)')
  for key in ('encoder_dropout', 'decoder_dropout', 'head_dropout'):
    if not 0 <= m[key] < 1:
      found.append(f'model.{key}={m[key]} must be in [0, 1)')
  type_problems = classes.cell_type_problems(d.cell_types)
  found += type_problems
  if not isinstance(d.cytoplasm, bool):
    found.append(f'data.cytoplasm={d.cytoplasm!r} must be True or False')
  bad_sets = set(d.datasets) - set(config_keys.DATASETS)
  if bad_sets or not d.datasets:
    found.append(
      f'data.datasets={tuple(d.datasets)}: expected names among {list(config_keys.DATASETS)}'
    )
  if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
    found.append(f'data.mean and data.std need 3 values each, std > 0 (got {d.mean}, {d.std})')
  if not 0 <= d.test_fraction < 1:
    found.append(f'data.test_fraction={d.test_fraction} must be in [0, 1)')
  if not type_problems and isinstance(d.cytoplasm, bool):
    table = classes.table_of(d)
    if t.class_weights and len(t.class_weights) != table.num_classes:
      found.append(
        f'train.class_weights has {len(t.class_weights)} values; expected '
        f'{table.num_classes}, one per class ({table.describe()}), or () for none'
      )
  if t.num_epochs == 0 and not (t.init_from and config.typer.fit):
    found.append(
      'train.num_epochs=0 (no training of the network) needs train.init_from (the '
      'model kept) and typer.fit (its cell typer is what is fitted)'
    )
  for key in (('log_every_steps',) if t.num_epochs == 0 else ('num_epochs', 'log_every_steps')) + (
    'eval_every_epochs',
    'checkpoint_every_epochs',
    'keep_checkpoints',
  ):
    if t[key] < 1:
      found.append(f'train.{key}={t[key]} must be >= 1')
  a = config.augment
  if d.dataset_repeats and (
    len(d.dataset_repeats) != len(d.datasets) or min(d.dataset_repeats) < 1
  ):
    found.append(
      f'data.dataset_repeats={tuple(d.dataset_repeats)}: one integer >= 1 per '
      f'dataset of data.datasets={tuple(d.datasets)}, or () for once each'
    )
  if not all(0 <= a[k] < 1 for k in ('brightness', 'contrast', 'saturation')) or not (
    0 <= a.hue_deg <= 180
  ):
    found.append(
      'augment: brightness, contrast and saturation must be in [0, 1), hue_deg in [0, 180]'
    )
  if a.augment_repeats < 1:
    found.append('augment.augment_repeats must be >= 1')
  if not 0 <= a.optics_prob <= 1:
    found.append('augment.optics_prob must be in [0, 1]')
  if min(a.gamma, a.blur_sigma, a.noise_std) < 0 or not (
    a.jpeg_quality == 0 or 1 <= a.jpeg_quality <= 95
  ):
    found.append(
      'augment: gamma, blur_sigma and noise_std must be >= 0, jpeg_quality 0 (off) or in [1, 95]'
    )
  if (
    not 0 <= a.zoom < 1
    or a.rotation_deg < 0
    or a.shear_deg < 0
    or min(a.width_shift, a.height_shift) < 0
  ):
    found.append('augment: zoom must be in [0, 1) and rotation, shear and shifts >= 0')
  if a.zoom_range and (len(a.zoom_range) != 2 or not 0 < a.zoom_range[0] <= a.zoom_range[1]):
    found.append(
      f'augment.zoom_range={tuple(a.zoom_range)}: (lower, upper) scale factors with '
      f'0 < lower <= upper, or () for [1 - zoom, 1 + zoom]'
    )
  if t.max_steps < 0 or t.warmup_epochs < 0:
    found.append('train.max_steps and train.warmup_epochs must be >= 0')
  if not 0 <= t.ema_decay < 1:
    found.append(f'train.ema_decay={t.ema_decay} must be in [0, 1) (0 = no average)')
  if any(not 0 <= s < m.num_levels for s in m.decoder_dropout_stages):
    found.append(
      f'model.decoder_dropout_stages={tuple(m.decoder_dropout_stages)}: stages are '
      f'0..{m.num_levels - 1} (0 = deepest)'
    )
  if config.input.num_workers < 0 or config.input.read_threads < 1:
    found.append('input.num_workers must be >= 0 and input.read_threads >= 1')
  return found + join_problems(t.join_timeout_s, t.heartbeat_timeout_s)


def join_problems(join_timeout_s, heartbeat_timeout_s) -> list[str]:
  """What is wrong with a multi-process run's timeouts; checked before joining too, as the
  join comes before the config's full check (it needs the devices of every process)."""
  given = {'train.join_timeout_s': join_timeout_s, 'train.heartbeat_timeout_s': heartbeat_timeout_s}
  return [
    f'{key}={value!r} must be a number of seconds > 0'
    for key, value in given.items()
    if not _positive_number(value)
  ]


def _positive_number(value) -> bool:
  numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
  return numeric and math.isfinite(value) and value > 0


def validate(
  config: ml_collections.ConfigDict, device_count: int = 1, process_count: int = 1
) -> None:
  """Raises ConfigError listing every problem of `config`."""
  found = problems(config, device_count, process_count)
  if found:
    raise ConfigError('invalid config:\n  ' + '\n  '.join(found))
