"""config.xla_flags: validated with the config, set before JAX's backend starts, never late."""

import os
import subprocess
import sys

import pytest

from configs import base
from configs import cpu
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_non_xla_flags_are_config_problems():
  config = base.get_config()
  config.xla_flags = '--xla_cpu_use_xnnpack=false -O3'
  assert any("['-O3'] are not --xla_" in p for p in config_checks.problems(config))
  assert config_checks.problems(cpu.get_config()) == []


def test_flags_are_set_before_the_backend_starts_and_the_users_win():
  """In a fresh process: the config's flags come first in XLA_FLAGS, the user's after them."""
  code = (
    'import os, jax; from wcsegnet_jax.core import xla_flags; '
    "xla_flags.apply('--xla_cpu_use_xnnpack=false'); "
    "print(os.environ['XLA_FLAGS']); jax.devices()"
  )
  env = dict(os.environ, XLA_FLAGS='--xla_cpu_enable_fast_math=false', JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  ).stdout
  assert out.split() == ['--xla_cpu_use_xnnpack=false', '--xla_cpu_enable_fast_math=false']


def test_flags_after_the_backend_started_are_refused(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top

  jax.devices()  # this test process's backend has started
  monkeypatch.setenv('XLA_FLAGS', '')
  with pytest.raises(config_lib.ConfigError, match='too late'):
    xla_flags.apply('--xla_cpu_use_xnnpack=false')
  xla_flags.apply('')  # nothing asked: nothing to refuse
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_xnnpack=false')
  xla_flags.apply('--xla_cpu_use_xnnpack=false')  # already in effect
