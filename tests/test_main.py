"""The command line's own mistakes: one line on stderr and exit status 2, no traceback."""

import os
import subprocess
import sys

from conftest import ROOT


def run(args, module=None, cwd=ROOT):
  command = ['-m', module] if module else []
  return subprocess.run(
    [sys.executable, *command, *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, 'PYTHONPATH': ROOT},
  )


def test_misspelled_override_is_one_line_naming_the_real_key(tmp_path):
  result = run(
    [f'--config={ROOT}/configs/smoke.py', f'--workdir={tmp_path}', '--config.train.batch_sizee=8'],
    module='wcsegnet_jax.main',
  )
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
    'error: unknown config key train.batch_sizee (did you mean train.batch_size?)'
  ]
  assert not list(tmp_path.iterdir())


def test_misspelled_override_of_a_default_config_is_one_line_too(tmp_path):
  """A tool's default --config applies the overrides when its flag is defined, at import."""
  result = run(
    [
      f'{ROOT}/tools/show_augmentations.py',
      '--config.augment.zoomm=0.1',
      f'--output={tmp_path / "a.png"}',
    ]
  )
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
    'error: unknown config key augment.zoomm (did you mean augment.zoom?)'
  ]


def test_empty_workdir_is_an_error_not_the_current_folder(tmp_path):
  result = run(
    [f'--config={ROOT}/configs/smoke.py', '--workdir='], module='wcsegnet_jax.main', cwd=tmp_path
  )
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1].startswith('error: no workdir given (--workdir is empty)')
  assert 'Traceback' not in result.stderr
  assert not list(tmp_path.iterdir())


def test_evaluate_checks_its_report_folder_first(tmp_path):
  (tmp_path / 'eval').write_text('')
  result = run(
    [f'--config={ROOT}/configs/smoke.py', f'--workdir={tmp_path}', '--mode=evaluate'],
    module='wcsegnet_jax.main',
  )
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1] == (
    f'error: {tmp_path}/eval is a file, not a folder; move it away or choose another --workdir'
  )


def test_coordinator_flags_come_together_or_not_at_all(tmp_path):
  result = run(
    [f'--config={ROOT}/configs/smoke.py', f'--workdir={tmp_path}', '--num_processes=2'],
    module='wcsegnet_jax.main',
  )
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
    'error: --coordinator_address, --process_id missing: give --coordinator_address, '
    '--num_processes and --process_id together (or none, to let JAX detect the cluster, e.g. '
    'under SLURM)'
  ]
  assert not list(tmp_path.iterdir())


def test_distributed_outside_a_cluster_says_how_to_start_one(tmp_path):
  result = run(
    [
      f'--config={ROOT}/configs/smoke.py',
      f'--workdir={tmp_path}',
      '--config.train.distributed=True',
    ],
    module='wcsegnet_jax.main',
    cwd=tmp_path,
  )
  assert result.returncode == 2
  line = result.stderr.splitlines()[-1]
  assert line.startswith('error: cannot join a cluster (config.train.distributed=True): ')
  assert 'tools/local_cluster.py' in line and 'Traceback' not in result.stderr


def test_missing_or_broken_config_file_is_one_line(tmp_path):
  """ml_collections reports these only when the config is first read, as a traceback."""
  missing = run(['--config=configs/nope.py', f'--workdir={tmp_path}'], module='wcsegnet_jax.main')
  (tmp_path / 'broken.py').write_text('def get_config(:\n')
  broken = run(
    [f'--config={tmp_path}/broken.py', f'--workdir={tmp_path}/w'], module='wcsegnet_jax.main'
  )
  no_file = run(
    [f'--workdir={tmp_path}/w', '--config.train.batch_size=8'], module='wcsegnet_jax.main'
  )
  assert [r.returncode for r in (missing, broken, no_file)] == [2, 2, 2]
  assert missing.stderr.splitlines() == [
    f'error: --config: configs/nope.py: no such config file (a path relative to the current '
    f'folder, {ROOT}, or an absolute one)'
  ]
  assert broken.stderr.splitlines() == [
    f'error: --config: {tmp_path}/broken.py, line 1: not valid Python (invalid syntax)'
  ]
  assert no_file.stderr.splitlines() == [
    'error: --config: --config.train.batch_size=8: give the config file first, '
    '--config=configs/....py'
  ]
  assert [p.name for p in tmp_path.iterdir()] == ['broken.py']


def test_help_lists_the_config_flag_and_how_to_override_it():
  result = run(['--help'], module='wcsegnet_jax.main')
  assert '--config: Config file (configs/*.py). Override its keys with' in result.stdout
