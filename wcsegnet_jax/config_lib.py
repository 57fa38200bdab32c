"""Start-up validation of a config: every problem reported at once, before anything compiles.

Also the `--config` flag of the commands: a misspelled `--config.section.key=...` override is one
line naming the closest real key (exit 2), not ml_collections' traceback.
"""

import difflib
import importlib.util
import json
import pathlib
import re
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from wcsegnet_jax import classes
from wcsegnet_jax import color
from wcsegnet_jax import decoding
from wcsegnet_jax import errors
from wcsegnet_jax.data import raw

# configs/base.py holds every knob; a key it lacks is a typo or a stale config.
BASE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'base.py'
CHOICES = {
    'rng_impl': ('rbg', 'threefry2x32'),   # names jax.random.key(impl=...) takes
    'model.activation': ('relu', 'leaky_relu'),
    'model.block_norm': ('none', 'batch'),
    'model.upsample': ('transpose', 'nearest'),
    'model.pad_mode': ('reflect', 'constant', 'edge'),
    'model.dtype': ('float32', 'bfloat16'),
    'train.lr_schedule': ('constant', 'cosine'),
    'train.loss': ('ce', 'dice_ce'),
    'augment.fill_mode': ('nearest', 'reflect', 'constant'),
    'eval.raw_layout': ('auto', 'wbc', 'folder'),
    'eval.decode': decoding.RULES,
    'data.normalize': ('dataset', 'per_image'),
    'data.color': color.COLOR_STEPS,
}


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
  nothing: augment.zoom under a non-empty augment.zoom_range."""
  return {'augment.zoom'} if flat.get('augment.zoom_range') else set()


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
          f'which the data.cell_types order no longer gives; train it again with this version')
  return merged


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def problems(config: ml_collections.ConfigDict, device_count: int = 1,
             process_count: int = 1) -> list[str]:
  """Everything wrong with `config`, as readable lines (empty when it can run)."""
  found = []
  known, given = flatten(base_config()), flatten(config)
  found += [unknown_key_line(k, known) for k in sorted(set(given) - set(known))]
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
  if config.eval.batch_size <= 0:   # evaluation runs on one local device: any size works
    found.append(f'eval.batch_size={config.eval.batch_size} must be > 0')
  if m.num_levels < 1 or m.base_width < 1 or m.blocks_per_stage < 1 or m.patch_size < 1:
    found.append('model.num_levels, base_width, blocks_per_stage and patch_size must be >= 1')
  elif d.image_size < m.patch_size * 2 ** m.num_levels:
    found.append(f'data.image_size={d.image_size} is too small for model.num_levels='
                 f'{m.num_levels} with model.patch_size={m.patch_size} (needs >= '
                 f'{m.patch_size * 2 ** m.num_levels}: one position after the poolings)')
  if d.fields_dir and not config.train.init_from:
    found.append(f'data.fields_dir={d.fields_dir!r} needs train.init_from: the model that labels '
                 f'its typed cells and that fine-tuning starts from (e.g. pretrained)')
  y = config.typer
  if min(y.encoder_stages, y.decoder_stages) < 0 or y.encoder_stages + y.decoder_stages < 1:
    found.append(f'typer.encoder_stages={y.encoder_stages} and typer.decoder_stages='
                 f'{y.decoder_stages} must be >= 0, one of them >= 1')
  if y.crop_color not in ('crop', 'field'):
    found.append(f"typer.crop_color={y.crop_color!r} must be 'crop' or 'field'")
  if y.views < 1 or y.l2 < 0 or y.field_weight <= 0 or not 0 <= y.uncertain_below < 1:
    found.append(f'typer: views ({y.views}) must be >= 1, l2 ({y.l2}) >= 0, field_weight '
                 f'({y.field_weight}) > 0 and uncertain_below ({y.uncertain_below}) in [0, 1)')
  if d.fields_scale < 0:
    found.append(f'data.fields_scale={d.fields_scale} must be > 0, or 0 to estimate it')
  reference = tuple(d.color_reference)
  if len(reference) != 6 or min(reference[3:], default=0) <= 0:
    found.append(f'data.color_reference={reference} must be 6 numbers: the L, a, b means, then '
                 f'their stds (> 0)')
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
  bad_sets = set(d.datasets) - set(raw.WBC_SUBSETS) - {'folder'}
  if bad_sets or not d.datasets:
    found.append(f'data.datasets={tuple(d.datasets)}: expected names among '
                 f'{sorted(raw.WBC_SUBSETS) + ["folder"]}')
  if len(d.mean) != 3 or len(d.std) != 3 or min(d.std) <= 0:
    found.append(f'data.mean and data.std need 3 values each, std > 0 (got {d.mean}, {d.std})')
  if not 0 <= d.test_fraction < 1:
    found.append(f'data.test_fraction={d.test_fraction} must be in [0, 1)')
  if not type_problems and isinstance(d.cytoplasm, bool):
    table = classes.table_of(d)
    if t.class_weights and len(t.class_weights) != table.num_classes:
      found.append(f'train.class_weights has {len(t.class_weights)} values; expected '
                   f'{table.num_classes}, one per class ({table.describe()}), or () for none')
  if t.num_epochs == 0 and not (t.init_from and config.typer.fit):
    found.append('train.num_epochs=0 (no training of the network) needs train.init_from (the '
                 'model kept) and typer.fit (its cell typer is what is fitted)')
  for key in (('log_every_steps',) if t.num_epochs == 0 else ('num_epochs', 'log_every_steps')) + (
      'eval_every_epochs', 'checkpoint_every_epochs', 'keep_checkpoints'):
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
  if min(a.gamma, a.blur_sigma, a.noise_std) < 0 or not (
      a.jpeg_quality == 0 or 1 <= a.jpeg_quality <= 95):
    found.append('augment: gamma, blur_sigma and noise_std must be >= 0, jpeg_quality 0 (off) '
                 'or in [1, 95]')
  if not 0 <= a.zoom < 1 or a.rotation_deg < 0 or a.shear_deg < 0 or min(
      a.width_shift, a.height_shift) < 0:
    found.append('augment: zoom must be in [0, 1) and rotation, shear and shifts >= 0')
  if a.zoom_range and (len(a.zoom_range) != 2 or not 0 < a.zoom_range[0] <= a.zoom_range[1]):
    found.append(f'augment.zoom_range={tuple(a.zoom_range)}: (lower, upper) scale factors with '
                 f'0 < lower <= upper, or () for [1 - zoom, 1 + zoom]')
  if t.max_steps < 0 or t.warmup_epochs < 0:
    found.append('train.max_steps and train.warmup_epochs must be >= 0')
  if not 0 <= t.ema_decay < 1:
    found.append(f'train.ema_decay={t.ema_decay} must be in [0, 1) (0 = no average)')
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


def unknown_key_line(key: str, known) -> str:
  """'unknown config key K (did you mean C?)', C the closest of `known` if any is close."""
  close = difflib.get_close_matches(key, list(known), n=1)
  return f'unknown config key {key}' + (f' (did you mean {close[0]}?)' if close else '')


def _keys(config, prefix: str = '') -> list[str]:
  """Every dotted key of `config`, sections included ('train' and 'train.batch_size')."""
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out += _keys(value, f'{prefix}{key}.')
  return out


def unknown_overrides(argv: list[str], config: ml_collections.ConfigDict,
                      name: str = 'config') -> list[str]:
  """A line per `--name.KEY=...` of `argv` whose KEY is not in `config`."""
  known = set(_keys(config))
  lines = []
  for arg in argv:
    match = re.match(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)', arg)
    key = match and re.sub(r'\[[^]]*\]', '', match.group(1))   # 'a.b[0]' indexes a.b
    if key and key not in known:
      lines.append(unknown_key_line(key, known))
  return lines


def bad_index_overrides(argv: list[str], config: ml_collections.ConfigDict,
                        name: str = 'config') -> list[str]:
  """A line per `--name.KEY[i]=...` of `argv` whose index i is past the end of KEY's tuple."""
  lines = []
  for arg in argv:
    match = re.match(rf'^--?{re.escape(name)}\.([^=\[]+)\[(-?\d+)\]', arg)
    if not match:
      continue
    key, index = match.group(1), int(match.group(2))
    value = config
    for part in key.split('.'):
      value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
    if isinstance(value, (tuple, list)) and not -len(value) <= index < len(value):
      lines.append(f'{name}.{key}[{index}]: {key} has {len(value)} item(s) ({tuple(value)}); '
                   f'set the whole value instead, e.g. --{name}.{key}="(...)"')
  return lines


def _config_path(argv: list[str], name: str) -> str | None:
  """The value of `--name` in `argv` (as `--name=P` or `--name P`), or None."""
  for i, arg in enumerate(argv):
    if re.match(rf'^--?{re.escape(name)}$', arg) and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith((f'--{name}=', f'-{name}=')):
      return arg.split('=', 1)[1]
  return None


def _exit_if_unknown_overrides(argv: list[str], name: str, path: str | None) -> None:
  """Prints a line per unknown override (or index past a tuple's end) and exits 2; returns if
  none is found."""
  try:
    config = load_config_file(path) if path else None
    lines = (unknown_overrides(argv, config, name) or bad_index_overrides(argv, config, name)
             if config is not None else [])
  except Exception:   # pylint: disable=broad-except  # let config_flags report its own error
    return
  if lines:
    print('\n'.join(f'error: {line}' for line in lines), file=sys.stderr)
    sys.exit(2)


_DEFAULT_CONFIG_FILES: dict[str, str | None] = {}   # flag name -> its default config file


def define_config_file(name: str = 'config', default: str | None = None,
                       help_string: str = 'Config file (configs/*.py).', **kwargs):
  """`config_flags.DEFINE_config_file`, with unknown override keys as one line (exit 2).

  A default config applies the command line's overrides here, when the flag is defined.
  """
  _DEFAULT_CONFIG_FILES[name] = default
  help_string += (f' Override its keys with --{name}.SECTION.KEY=VALUE, e.g. '
                  f'--{name}.train.batch_size=64.')
  try:
    holder = config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except (AttributeError, KeyError):
    _exit_if_unknown_overrides(sys.argv, name, _config_path(sys.argv, name) or default)
    raise
  # absl's --help lists the flags the main program defines (module sys.argv[0]); this one is
  # defined here, so it is declared the program's too.
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  return holder


def config_file_problem(path: str) -> str | None:
  """Why a `--config` value cannot be loaded, in a line (None if it loads)."""
  file = pathlib.Path(path.split(':', 1)[0])
  if not file.is_file():
    return (f'{file}: no such config file (a path relative to the current folder, '
            f'{pathlib.Path.cwd()}, or an absolute one)')
  try:
    load_config_file(path)
  except SyntaxError as e:
    return f'{file}, line {e.lineno}: not valid Python ({e.msg})'
  except Exception as e:   # pylint: disable=broad-except  # whatever its get_config raised
    return f'{file}: loading it failed: {type(e).__name__}: {e}'
  return None


def _exit_on_config_usage_errors(argv: list[str], names: list[str]) -> None:
  """Overrides without their config file, and config files that do not load: a line, exit 2.

  (ml_collections reports an unloadable file only when the config is first read, as a
  traceback from inside the command, or as a SyntaxError or absl usage error while parsing:
  loading the small file once more up front is simpler than catching each of those.)"""
  for name in names:
    path = _config_path(argv, name) or _DEFAULT_CONFIG_FILES.get(name)
    overrides = [a for a in argv if re.match(rf'^--?{re.escape(name)}\.', a)
                 and not any(b.startswith(('--flagfile', '-flagfile')) for b in argv)]
    problem = (config_file_problem(path) if path
               else f'{overrides[0]}: give the config file first, --{name}=configs/....py'
               if overrides else None)
    if problem:
      print(f'error: --{name}: {problem}', file=sys.stderr)
      sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), with a missing or broken
  config file, and unknown `--config.*` keys, as one line each and exit 2."""
  names = [name for name in list(flags.FLAGS)
           if config_flags.config_flags.is_config_flag(flags.FLAGS[name])]
  if not any(a in ('--help', '-h', '--helpfull', '--helpshort') for a in argv):
    _exit_on_config_usage_errors(argv, names)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, IndexError):   # ml_collections, for a key it lacks
    for name in names:
      _exit_if_unknown_overrides(argv, name, _config_path(argv, name))
    raise
