"""The `--config` flag of the commands: a misspelled `--config.section.key=...` override, a
missing config file or one that does not load is one line naming the fix (exit 2), not
ml_collections' traceback.
"""

import pathlib
import re
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from wcsegnet_jax.core import config_lib


def _keys(config, prefix: str = '') -> list[str]:
  """Every dotted key of `config`, sections included ('train' and 'train.batch_size')."""
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out += _keys(value, f'{prefix}{key}.')
  return out


def _unindexed(key: str) -> str:
  """'a.b[0]' indexes a.b: 'a.b'."""
  return re.sub(r'\[[^]]*\]', '', key)


def overridden_keys(argv: list[str], name: str = 'config') -> list[str]:
  """The KEY of each `--name.KEY=...` of `argv`, in order ('a.b[0]' indexes a.b: 'a.b')."""
  keys = []
  for arg in argv:
    match = re.match(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)', arg)
    if match:
      keys.append(_unindexed(match.group(1)))
  return keys


def given_keys(flag) -> list[str]:
  """The dotted KEY of each `--NAME.KEY=...` a config flag was given, on the command line or in a
  --flagfile (ml_collections' record of them; 'a.b[0]' indexes a.b: 'a.b')."""
  return [_unindexed(path) for path in flag.override_values]


def apply_given(
  config: ml_collections.ConfigDict,
  parsed: ml_collections.ConfigDict,
  keys: list[str],
  sections: tuple[str, ...],
) -> None:
  """Sets in `config` the `keys` (`given_keys`) of `sections` to their values in `parsed` (the
  flag's config): a tool starts from a model's own config and takes only what its user changed,
  not the flag's default config's other values."""
  for key in keys:
    section, _, leaf = key.partition('.')
    if section in sections and leaf in config[section]:
      config[section][leaf] = parsed[section][leaf]


def unknown_overrides(
  argv: list[str], config: ml_collections.ConfigDict, name: str = 'config'
) -> list[str]:
  """A line per `--name.KEY=...` of `argv` whose KEY is not in `config`."""
  known = set(_keys(config))
  return [
    config_lib.unknown_key_line(key, known)
    for key in overridden_keys(argv, name)
    if key not in known
  ]


def bad_index_overrides(
  argv: list[str], config: ml_collections.ConfigDict, name: str = 'config'
) -> list[str]:
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
      lines.append(
        f'{name}.{key}[{index}]: {key} has {len(value)} item(s) ({tuple(value)}); '
        f'set the whole value instead, e.g. --{name}.{key}="(...)"'
      )
  return lines


def _config_path(argv: list[str], name: str) -> str | None:
  """The value of `--name` in `argv` (as `--name=P` or `--name P`), or None."""
  for i, arg in enumerate(argv):
    if re.match(rf'^--?{re.escape(name)}$', arg) and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith((f'--{name}=', f'-{name}=')):
      return arg.split('=', 1)[1]
  return None


def _with_flagfiles_read(argv: list[str]) -> list[str]:
  """`argv` with each --flagfile's flags in its place (as absl and ml_collections read them)."""
  try:
    return flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  except Exception:  # pylint: disable=broad-except  # absl reports a bad flagfile itself
    return argv


def _exit_if_unknown_overrides(argv: list[str], name: str, path: str | None) -> None:
  """Prints a line per unknown override (or index past a tuple's end), on the command line or
  in a --flagfile, and exits 2; returns if none is found."""
  argv = _with_flagfiles_read(argv)
  try:
    config = config_lib.load_config_file(path) if path else None
    lines = (
      unknown_overrides(argv, config, name) or bad_index_overrides(argv, config, name)
      if config is not None
      else []
    )
  except Exception:  # pylint: disable=broad-except  # let config_flags report its own error
    return
  if lines:
    print('\n'.join(f'error: {line}' for line in lines), file=sys.stderr)
    sys.exit(2)


_DEFAULT_CONFIG_FILES: dict[str, str | None] = {}  # flag name -> its default config file


def define_config_file(
  name: str = 'config',
  default: str | None = None,
  help_string: str = 'Config file (configs/*.py).',
  example: str = 'train.batch_size=64',
  **kwargs,
):
  """`config_flags.DEFINE_config_file`, with unknown override keys as one line (exit 2).

  A default config applies the command line's overrides here, when the flag is defined.
  """
  _DEFAULT_CONFIG_FILES[name] = default
  help_string += f' Override its keys with --{name}.SECTION.KEY=VALUE, e.g. --{name}.{example}.'
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
    return (
      f'{file}: no such config file (a path relative to the current folder, '
      f'{pathlib.Path.cwd()}, or an absolute one)'
    )
  try:
    config_lib.load_config_file(path)
  except SyntaxError as e:
    return f'{file}, line {e.lineno}: not valid Python ({e.msg})'
  except Exception as e:  # pylint: disable=broad-except  # whatever its get_config raised
    return f'{file}: loading it failed: {type(e).__name__}: {e}'
  return None


def _exit_on_config_usage_errors(argv: list[str], names: list[str]) -> None:
  """Overrides without their config file, and config files that do not load: a line, exit 2.

  (ml_collections reports an unloadable file only when the config is first read, as a
  traceback from inside the command, or as a SyntaxError or absl usage error while parsing:
  loading the small file once more up front is simpler than catching each of those.)"""
  for name in names:
    path = _config_path(argv, name) or _DEFAULT_CONFIG_FILES.get(name)
    overrides = [
      a
      for a in argv
      if re.match(rf'^--?{re.escape(name)}\.', a)
      and not any(b.startswith(('--flagfile', '-flagfile')) for b in argv)
    ]
    problem = (
      config_file_problem(path)
      if path
      else f'{overrides[0]}: give the config file first, --{name}=configs/....py'
      if overrides
      else None
    )
    if problem:
      print(f'error: --{name}: {problem}', file=sys.stderr)
      sys.exit(2)


HELP_FLAGS = ('--help', '-h', '--helpfull', '--helpshort', '-help', '-helpfull', '-helpshort')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), with a missing or broken
  config file, and unknown `--config.*` keys, as one line each and exit 2; --help exits 0 (absl
  ends it with status 1, as if asking for help failed)."""
  names = [
    name
    for name in list(flags.FLAGS)
    if config_flags.config_flags.is_config_flag(flags.FLAGS[name])
  ]
  asks_help = any(a in HELP_FLAGS for a in argv[1:])
  if not asks_help:
    _exit_on_config_usage_errors(argv, names)
  try:
    return app.parse_flags_with_usage(argv)
  except SystemExit as e:
    if asks_help and e.code == 1:
      sys.exit(0)
    raise
  except (AttributeError, KeyError, IndexError):  # ml_collections, for a key it lacks
    for name in names:
      _exit_if_unknown_overrides(argv, name, _config_path(argv, name))
    raise
