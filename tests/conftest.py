"""Shared test set-up: the repository root on sys.path, the `slow` marker, generated raw data."""

import os
import pathlib
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
  sys.path.insert(0, TESTS)

import pytest  # pylint: disable=g-import-not-at-top

from configs import base  # pylint: disable=g-import-not-at-top
import fixtures  # pylint: disable=g-import-not-at-top
from wcsegnet_jax.data import tfds_builder

# The public WBC Image Dataset, where this machine has it (tests on it are skipped otherwise).
# CI and developers keep shared/ beside the checkout.
REAL_WBC_DIR = pathlib.Path(
  os.environ.get(
    'WCSEG_TEST_REAL_DATA', os.path.join(ROOT, '..', 'shared', 'datasets', 'segmentation_WBC')
  )
).resolve()


def pytest_configure(config):
  # A suite started in the background by a non-interactive shell (`cmd &`, nohup, some CI
  # runners) inherits SIGINT ignored, and so would every training subprocess it starts: the
  # Ctrl-C tests would see nothing. Restore Python's own handler, as an interactive run has.
  if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  config.addinivalue_line(
    'markers',
    'slow: takes more than a few seconds (still run by default; deselect with -m "not slow")',
  )


def data_config(raw_dir, tfds_dir, **overrides):
  """The base config's data section pointed at a raw folder and a private TFDS folder."""
  c = base.get_config()
  c.data.raw_dir = str(raw_dir)
  c.data.tfds_dir = str(tfds_dir)
  for key, value in overrides.items():
    setattr(c.data, key, value)
  return c


@pytest.fixture(scope='session')
def wbc_raw(tmp_path_factory):
  """The generated WBC-layout raw folder, written once: (path, manifest {source: [FakeImage]})."""
  root = tmp_path_factory.mktemp('wbc_raw')
  return root, fixtures.make_wbc_raw(root)


@pytest.fixture(scope='session')
def wbc_tfds_dir(tmp_path_factory):
  """One TFDS folder shared by the tests that only read the generated data's builds."""
  return tmp_path_factory.mktemp('wbc_tfds')


@pytest.fixture
def wbc_config(wbc_raw, wbc_tfds_dir):
  """A fresh config (paper values) reading the generated raw data, builds shared by the session."""
  return data_config(wbc_raw[0], wbc_tfds_dir)


@pytest.fixture(scope='session')
def wbc_builders(wbc_raw, wbc_tfds_dir):
  """The generated data's two sources, prepared once: {source: builder}."""
  c = data_config(wbc_raw[0], wbc_tfds_dir)
  return {source: tfds_builder.prepare(source, c.data) for source in c.data.datasets}


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (a disk that fills up), mounted for the test; skipped where the tests do not
  run as root, who alone may mount one."""
  if os.geteuid() != 0:
    pytest.skip('a full disk is simulated with a small tmpfs, which only root may mount')
  disk = tmp_path / 'small_disk'
  disk.mkdir()
  mounted = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(disk)],
    capture_output=True,
    text=True,
    check=False,
  )
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  try:
    yield disk
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)


def _share_compilations(cache_dir: str) -> None:
  """Tests build the same tiny programs many times (and in subprocesses): compile each once."""
  import jax  # pylint: disable=g-import-not-at-top

  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', cache_dir)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


_share_compilations(
  os.path.join(
    os.environ.get('PYTEST_JAX_CACHE_ROOT', '/tmp'), f'wcsegnet_jax_test_cache_{os.getuid()}'
  )
)
