"""Several processes of one run (tools/local_cluster.py, gloo on CPUs): the same global batches,
parameters and test metrics as one process, an exact resume, one writer, and failures that stop
every process instead of leaving some waiting."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import base
from conftest import ROOT
from test_train import cli_args, tiny_config
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import errors as errors_lib
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.dev import local_cluster
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.training import parallel
from wcsegnet_jax.training import train
from wcsegnet_jax.training import workdirs

TOLERANCE = 1e-5
CLUSTER_TIMEOUT = 240  # seconds; a hang fails the test instead of stalling CI
UNTIMED = ('time', 'elapsed_seconds', 'images_per_second')


def cluster_config(raw_dir, tfds_dir):
  """test_train's tiny net, one level deep (it compiles in a few seconds, which counts: only
  process 0 reads and writes JAX's compilation cache), on one dataset: two steps per epoch,
  two epochs."""
  c = tiny_config(raw_dir, tfds_dir)
  c.model.update(num_levels=1, decoder_dropout_stages=(0,))
  c.data.datasets = ('jiangxi',)
  c.train.log_every_steps = 50  # the command line's default: logs at epoch ends
  return c


def main_args(c) -> list[str]:
  return [
    *cli_args(c),
    f'--config.data.datasets={c.data.datasets!r}',
    f'--config.model.decoder_dropout_stages={c.model.decoder_dropout_stages!r}',
  ]


def run_cluster(args, num_processes=2) -> tuple[int, str]:
  out = io.StringIO()
  status = local_cluster.run(num_processes, args, out=out, cwd=ROOT, timeout=CLUSTER_TIMEOUT)
  return status, out.getvalue()


def saved_state(workdir: pathlib.Path, step: int) -> dict:
  """A checkpoint's whole train state as numpy, whatever the processes that wrote it."""
  path = checkpoints.checkpoint_dir(workdir) / str(step) / 'state'
  metadata = ocp.PyTreeCheckpointer().metadata(path)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def logged(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl without the wall-clock fields."""
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in UNTIMED} for line in lines]


def files_of(workdir: pathlib.Path) -> set[str]:
  """Every file under `workdir` but inside checkpoint steps and TensorBoard (named by time)."""
  return {
    str(p.relative_to(workdir))
    for p in workdir.rglob('*')
    if p.is_file() and p.parent.name != 'tensorboard' and 'checkpoints' not in p.parts
  }


def test_processes_read_their_blocks_of_the_one_process_batches(wbc_raw, wbc_tfds_dir):
  c = cluster_config(wbc_raw[0], wbc_tfds_dir)
  datasets = input_pipeline.load_datasets(c.data)
  one = iter(input_pipeline.train_dataset(datasets, c))
  two = [iter(input_pipeline.train_dataset(datasets, c, i, 2)) for i in range(2)]
  for _ in range(3):  # past an epoch's end (two steps)
    whole, halves = next(one), [next(it) for it in two]
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


@pytest.mark.slow
def test_two_processes_train_and_resume_as_one_process(wbc_raw, tmp_path):
  """Process 0 builds the data while process 1 waits; stopped after the first epoch's
  checkpoint and started again, the two end where one uninterrupted process does."""
  c = cluster_config(wbc_raw[0], tmp_path / 'tfds')  # a fresh build, made by the cluster
  two, one = tmp_path / 'two', tmp_path / 'one'
  status, first = run_cluster([*main_args(c), f'--workdir={two}', '--config.train.max_steps=2'])
  assert status == 0, first[-3000:]
  assert checkpoints.make_manager(two, read_only=True).all_steps() == [2]
  status, resumed = run_cluster([*main_args(c), f'--workdir={two}'])
  assert status == 0, resumed[-3000:]
  assert 'Resumed from' in resumed and 'at step 2' in resumed
  for output in (first, resumed):  # process 1 logs warnings at most
    assert not [line for line in output.splitlines() if line.startswith('[1] I')], output[-3000:]

  state = train.train_and_evaluate(c, one)
  final = int(state.step)
  assert final == 4
  a, b = saved_state(one, final), saved_state(two, final)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  diffs = jax.tree.leaves(
    jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y))), a, b)
  )
  assert max(diffs) <= TOLERANCE

  # The same records, each once (process 0 alone writes), with the same training and test numbers.
  one_log, two_log = logged(one), logged(two)
  assert [sorted(r) for r in two_log] == [sorted(r) for r in one_log]
  assert any('test/jiangxi/dice' in r for r in two_log)
  for r1, r2 in zip(one_log, two_log):
    np.testing.assert_allclose(
      [r2[k] for k in sorted(r1)], [r1[k] for k in sorted(r1)], atol=TOLERANCE, rtol=0
    )
  # One config, data record and metric log, as one process writes; each process's iterator. The
  # command (not the in-process reference run) ends with its reports, written once too.
  reports = {f for f in files_of(two) if f.startswith('eval/') or f == 'curves.png'}
  assert (
    files_of(two) - reports
    == files_of(one)
    == {workdirs.LOCK_FILE, 'config.json', 'classes.json', 'data.json', 'metrics.jsonl'}
  )
  assert {'curves.png', 'eval/jiangxi/metrics.json'} <= reports
  assert json.loads((two / 'config.json').read_text()) == json.loads(
    (one / 'config.json').read_text()
  )
  assert len(list((two / 'tensorboard').iterdir())) == 2  # one per start, not per process
  for step in (2, 4):
    assert sorted(
      p.name for p in (two / 'checkpoints' / str(step) / 'data_iter').glob('*.json')
    ) == ['process_0-of-2.json', 'process_1-of-2.json']
  assert not [p for p in tmp_path.rglob('*') if p.name.endswith('.tmp') or 'write_test' in p.name]

  # Another number of processes cannot continue the iterators: one clear error.
  c.train.num_epochs = 3
  with pytest.raises(errors_lib.CheckpointError, match='written by a run of 2 processes'):
    train.train_and_evaluate(c, two)


@pytest.mark.slow
def test_a_busy_workdir_stops_every_process(wbc_raw, tmp_path):
  """Only process 0 takes the lock; the others learn it failed rather than wait for it."""
  c = cluster_config(wbc_raw[0], tmp_path / 'tfds')
  workdir = tmp_path / 'wd'
  workdir.mkdir()
  port = local_cluster.free_port()
  with workdirs.held(workdir):
    procs = [
      subprocess.Popen(
        [
          *local_cluster.MAIN_COMMAND,
          *main_args(c),
          f'--workdir={workdir}',
          *local_cluster.process_args(i, 2, port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )
      for i in range(2)
    ]
    try:
      errors = [p.communicate(timeout=90)[1].splitlines()[-1] for p in procs]
    finally:
      for p in procs:
        p.kill()
  assert [p.returncode for p in procs] == [2, 2], errors
  assert errors[0].startswith(f'error: workdir {workdir} is in use by another run (pid ')
  assert errors[1].startswith(f'error: workdir {workdir} could not be locked by process 0')
  assert not (workdir / 'checkpoints').exists()


FAKE_MAIN = textwrap.dedent("""
    import os, sys, time
    process_id = int(next(a for a in sys.argv if a.startswith('--process_id='))[13:])
    print('started with', *sys.argv[1:], flush=True)
    if process_id == 1 and '--fail' in sys.argv:
      sys.exit(3)
    if process_id == 0 and '--fail' in sys.argv:
      time.sleep(60)   # as if waiting for process 1 at a collective
    if '--sleep' in sys.argv:
      print('pid', os.getpid(), flush=True)
      time.sleep(60)
""")


def test_a_failed_process_stops_the_others_and_gives_its_status(tmp_path):
  script = tmp_path / 'fake_main.py'
  script.write_text(FAKE_MAIN)
  out, started = io.StringIO(), time.monotonic()
  status = local_cluster.run(
    2, ['--fail'], port=1234, command=(sys.executable, str(script)), out=out, grace=1
  )
  assert status == 3 and time.monotonic() - started < 30
  lines = out.getvalue().splitlines()
  assert sorted(lines[:2]) == [
    f'[{i}] started with --fail --coordinator_address=127.0.0.1:1234 --num_processes=2 '
    f'--process_id={i}'
    for i in range(2)
  ]
  assert lines[2:] == ['local_cluster: process 1 of 2 failed (exit status 3); stopped the others']

  out = io.StringIO()
  assert local_cluster.run(3, [], command=(sys.executable, str(script)), out=out) == 0
  assert sorted(line[:4] for line in out.getvalue().splitlines()) == ['[0] ', '[1] ', '[2] ']


def test_sigterm_to_the_launcher_stops_every_process(tmp_path):
  """A scheduler's stop reaches the processes, which run in sessions of their own."""
  script = tmp_path / 'fake_main.py'
  script.write_text(FAKE_MAIN)
  launcher = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys; from wcsegnet_jax.dev import local_cluster; '
      f'sys.exit(local_cluster.run(2, ["--sleep"], command=(sys.executable, {str(script)!r})))',
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  pids = []
  while len(pids) < 2:
    line = launcher.stdout.readline()
    assert line, 'the launcher ended early'
    if line[4:].startswith('pid '):
      pids.append(int(line.split()[-1]))
  launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=30) == 130
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_the_tool_refuses_a_call_without_main_arguments():
  result = subprocess.run(
    [sys.executable, 'tools/local_cluster.py', '--num_processes=2'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode != 0
  assert 'give the arguments of wcsegnet_jax.main after --' in result.stderr


def test_coordinator_settings_are_checked_before_jax_sees_them():
  assert parallel.coordinator_problems(None, None, None) == []
  assert parallel.coordinator_problems('10.0.0.1:1234', 4, 3) == []
  assert parallel.coordinator_problems('10.0.0.1', 2, 2) == [
    "--coordinator_address='10.0.0.1' is not HOST:PORT",
    '--process_id=2 must be in 0..1',
  ]
  assert parallel.coordinator_problems(None, 2, 0)[0].startswith('--coordinator_address missing')


def test_join_timeouts_are_checked_before_joining():
  with pytest.raises(
    errors_lib.ConfigError,
    match=r'^train.join_timeout_s=0 must be a number of seconds > 0; '
    r'train.heartbeat_timeout_s=-1 must be a number of seconds > 0$',
  ):
    parallel.initialize(False, join_timeout_s=0, heartbeat_timeout_s=-1)
  c = base.get_config()
  c.train.heartbeat_timeout_s = 0
  assert config_checks.problems(c) == [
    'train.heartbeat_timeout_s=0 must be a number of seconds > 0'
  ]


def _process(args, process_id, port, **kwargs) -> subprocess.Popen:
  """Process `process_id` of a two-process run of wcsegnet_jax.main, started without the tool."""
  return subprocess.Popen(
    [*local_cluster.MAIN_COMMAND, *args, *local_cluster.process_args(process_id, 2, port)],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    **kwargs,
  )


def test_a_process_whose_partner_never_comes_stops_in_time_naming_the_setting(tmp_path):
  """Without the tool nothing stops a lone process: it waits train.join_timeout_s, not JAX's
  five minutes, then says so in one line (JAX itself aborts with a native stack trace)."""
  port = local_cluster.free_port()
  args = [f'--config={ROOT}/configs/smoke.py', f'--workdir={tmp_path / "wd"}']
  started = time.monotonic()
  lone = _process([*args, '--config.train.join_timeout_s=3'], 1, port)
  _, stderr = lone.communicate(timeout=60)
  assert lone.returncode == 2 and time.monotonic() - started < 30, stderr
  assert stderr.splitlines() == [
    f'error: the run could not join within 3 s: 2 processes expected at the coordinator '
    f'127.0.0.1:{port}, this is process 1; start every process (the same --coordinator_address '
    f'and --num_processes, each its own --process_id), or raise train.join_timeout_s (e.g. '
    f'--config.train.join_timeout_s=6) when some start later'
  ]
  assert not (tmp_path / 'wd').exists()


def test_a_killed_partner_stops_the_survivor_within_the_heartbeat_timeout(wbc_raw, tmp_path):
  """A partner that dies after joining (SIGKILL: nothing of ours runs) is noticed by JAX's
  coordination service when its heartbeats stop: JAX then aborts the survivor, its own lines
  naming the silent process, within train.heartbeat_timeout_s instead of JAX's 100 s."""
  c = cluster_config(wbc_raw[0], tmp_path / 'tfds')
  heartbeat_s, port = 3, local_cluster.free_port()
  args = [
    *main_args(c),
    f'--workdir={tmp_path / "wd"}',
    f'--config.train.heartbeat_timeout_s={heartbeat_s}',
    '--config.train.num_epochs=50',  # still training when the partner dies
  ]
  survivor, partner = [_process(args, i, port) for i in range(2)]
  try:
    seen = []
    while not any('steps per epoch' in line for line in seen):  # joined, data built
      seen.append(survivor.stderr.readline())
      assert seen[-1], ''.join(seen)[-3000:]
    partner.kill()
    killed = time.monotonic()
    rest = survivor.communicate(timeout=60)[1]
    waited = time.monotonic() - killed
  finally:
    for p in (survivor, partner):
      p.kill()
      p.wait()
  assert survivor.returncode != 0 and waited < heartbeat_s + 15, (waited, rest[-3000:])
  named = 'The following tasks are unhealthy (stopped sending heartbeats):\n1\n'
  assert named in rest, rest[-3000:]
