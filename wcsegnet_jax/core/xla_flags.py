"""The XLA flags a config asks for (`config.xla_flags`), set before JAX starts its backend.

XLA reads the XLA_FLAGS environment variable once, when the first device is used, so the
entry points (train/evaluate, the benchmark tool) call `apply` right after parsing the config.
Flags the user already put in XLA_FLAGS come later on the line and so take precedence.
"""

import os

from jax._src import xla_bridge  # no public API says whether the backend has started

from wcsegnet_jax.core import config_lib


def apply(flags: str) -> None:
  """Prepends `flags` (space-separated `--xla_...=value`) to XLA_FLAGS; no-op when empty."""
  flags = flags.strip()
  user = os.environ.get('XLA_FLAGS', '')
  if not flags or flags in user:
    return
  if xla_bridge.backends_are_initialized():
    raise config_lib.ConfigError(
      f'config.xla_flags={flags!r} came after JAX started its backend, too late to take '
      'effect; set them in the XLA_FLAGS environment variable instead'
    )
  os.environ['XLA_FLAGS'] = f'{flags} {user}'.strip()
