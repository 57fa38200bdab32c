"""tools/gpu_run.sh --dry_run end to end on the CPU: the files it writes, and the budget kept.

The dry run is the GPU command with a tiny net; the generated raw data (tests/fixtures.py)
keeps it fast. The two end-to-end runs share compilations through the tests' JAX cache.
"""

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import ROOT
from tools import gpu_run


def run_gpu_run(tmp_path, *args, timeout=300):
  """Runs the shell wrapper as the GPU machine would, with this interpreter; (result, wall s)."""
  start = time.monotonic()
  result = subprocess.run(
    ['bash', f'{ROOT}/tools/gpu_run.sh', *args],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, 'PYTHON': sys.executable},
  )
  return result, time.monotonic() - start


def checkpoint_like(out: pathlib.Path) -> list[pathlib.Path]:
  return [
    p
    for p in out.rglob('*')
    if p.name in ('checkpoints', '_CHECKPOINT_METADATA') or 'ocdbt' in p.name
  ]


@pytest.mark.slow
def test_dry_run_writes_benchmark_table1_curves_and_no_checkpoint(wbc_raw, tmp_path):
  out, scratch, archive = tmp_path / 'out', tmp_path / 'scratch', tmp_path / 'back' / 'a.tar.gz'
  result, wall = run_gpu_run(
    tmp_path,
    f'--out={out}',
    '--dry_run',
    f'--data_dir={wbc_raw[0]}',
    f'--scratch={scratch}',
    '--runs=wcseg_s0',
    '--budget_s=240',
    f'--archive={archive}',
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['dry_run'] and summary['elapsed_s'] <= 240 and wall < 240 + 10
  assert summary['device']['platform'] == 'cpu'

  bench = json.loads((out / 'benchmark.json').read_text())
  assert bench['complete'] and {'ceilings', 'results', 'environment', 'model_flops'} <= set(bench)
  assert bench['ceilings']['datasheet'] is None  # a CPU has no data-sheet entry
  rows = {(r['mode'], r['dtype']): r for r in bench['results'] if r['mode'] != 'input'}
  assert set(rows) == {(m, d) for m in ('train', 'infer') for d in ('bfloat16', 'float32')}
  assert all(r['images_per_s'] > 0 and r['mfu'] > 0 for r in rows.values())
  assert {r['num_workers'] for r in bench['results'] if r['mode'] == 'input'} == {0, 1}

  run = out / 'runs' / 'wcseg_s0'
  for dataset in ('jiangxi', 'cellavision'):
    metrics = json.loads((run / 'eval' / dataset / 'metrics.json').read_text())
    assert 0.0 <= metrics['paper']['dice'] <= 1.0
  assert (run / 'metrics.jsonl').exists() and 'wcsegnet_jax.main' in (run / 'train.log').read_text()
  (record,) = summary['runs']
  assert record['train']['status'] == 'finished' and record['eval']['status'] == 'finished'
  assert (out / 'curves.png').read_bytes()[:4] == b'\x89PNG'

  report = (out / 'report.md').read_text()
  for section in (
    '## Benchmark',
    '## Table 1',
    '### jiangxi',
    '### cellavision',
    '## Training curves',
    '## Cut or skipped',
  ):
    assert section in report, section
  assert 'paper: WCSegNet' in report and '0.9653' in report and 'wcseg_s0 (WCSegNet)' in report
  assert report.strip() in result.stdout  # the end of the output is the report

  # Checkpoints were written, in the scratch folder only.
  assert checkpoint_like(scratch) and not checkpoint_like(out)
  assert summary['checkpoint_files_in_out'] == []
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert 'out/report.md' in names and 'out/runs/wcseg_s0/eval/jiangxi/metrics.json' in names


@pytest.mark.slow
def test_dry_run_cuts_what_would_overrun_the_budget(wbc_raw, tmp_path):
  """A short benchmark share stops the benchmark; a run of 10000 epochs is stopped at the
  budget and evaluated from its last checkpoint; the next run is not started."""
  out, budget = tmp_path / 'out', 36
  result, wall = run_gpu_run(
    tmp_path,
    f'--out={out}',
    '--dry_run',
    f'--data_dir={wbc_raw[0]}',
    f'--scratch={tmp_path / "scratch"}',
    '--runs=wcseg_s0,unet_relu_s0',
    '--override=train.num_epochs=10000',
    f'--budget_s={budget}',
    '--bench_share=0.1',
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert wall < budget + 5
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['benchmark'][0]['status'] == 'cut'
  bench = out / 'benchmark.json'  # absent if stopped before its first write
  if bench.exists():
    bench = json.loads(bench.read_text())
    assert not bench['complete'] or any('skipped' in r for r in bench['results'])
  (run,) = summary['runs']
  assert run['name'] == 'wcseg_s0' and run['train']['status'] == 'cut'
  assert run['epochs_done'] is None or run['epochs_done'] < 10000
  if run['last_checkpoint'] is not None:  # on a loaded machine the first epoch may not end
    assert run['eval']['status'] == 'finished'
    assert (out / 'runs' / 'wcseg_s0' / 'eval' / 'jiangxi' / 'metrics.json').exists()
  cut = '\n'.join(summary['cut'])
  assert 'benchmark: ' in cut and 'wcseg_s0: training stopped' in cut
  assert 'not started for lack of time' in cut and 'unet_relu_s0' in cut
  report = (out / 'report.md').read_text()
  assert 'not started for lack of time' in report and '| wcseg_s0 | cut |' in report
  assert not checkpoint_like(out)


def test_run_limited_stops_a_process_group(tmp_path):
  """The child's own child (a grain worker, say) goes too."""
  code = (
    'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", '
    '"import time; time.sleep(60)"]); time.sleep(60)'
  )
  done = gpu_run.run_limited(
    [sys.executable, '-c', code], tmp_path / 'log', 1.0, dict(os.environ), grace_s=1.0
  )
  assert done['cut'] and done['returncode'] != 0 and done['seconds'] < 10


def test_bad_run_names_are_refused_before_anything_runs(tmp_path):
  result, _ = run_gpu_run(
    tmp_path,
    f'--out={tmp_path / "out"}',
    '--dry_run',
    '--runs=wcseg_s0,no_such_config_s1',
    timeout=60,
  )
  assert result.returncode != 0 and 'no_such_config_s1' in result.stderr
  assert not (tmp_path / 'out').exists()


def test_gpu_settings_benchmark_the_paper_net_as_asked(tmp_path, monkeypatch):
  monkeypatch.setattr(gpu_run.importlib.util, 'find_spec', lambda name: object())  # torch too
  commands = gpu_run.benchmark_commands(
    gpu_run.GPU, tmp_path / 'data', tmp_path / 'tfds', ['bfloat16', 'float32']
  )
  name, argv, _ = commands[0]
  assert name == 'benchmark' and f'--config={ROOT}/configs/wcseg.py' in argv
  assert {
    '--batch_sizes=16,64,256',
    '--dtypes=bfloat16,float32',
    '--modes=train,infer,input',
    '--input_workers=0,1,2,4,8',
  } <= set(argv)
  assert [c[0] for c in commands[1:]] == ['benchmark_torch_bfloat16', 'benchmark_torch_float32']
  for _, argv, _ in commands[1:]:
    assert {'--torch_compile', '--modes=torch_train,train', '--batch_sizes=64'} <= set(argv)
  assert sum(c[2] for c in commands) == pytest.approx(1.0)
