"""A training command ends with its results: reports, curves, a summary naming them and the
next command; the workdir remembers its data, so evaluate needs no environment variable."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import records as records_lib
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.training import end_of_run


def run_main(args, env):
  return subprocess.run(
    [sys.executable, '-m', 'wcsegnet_jax.main', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env={**env, 'PYTHONPATH': ROOT},
  )


def test_summary_names_dice_reports_curves_and_the_predict_command(tmp_path):
  text = end_of_run.summary_text(
    tmp_path,
    3725,
    {'jiangxi': 0.96612, 'cellavision': None},
    {'jiangxi': tmp_path / 'eval' / 'jiangxi', 'cellavision': tmp_path / 'eval' / 'cellavision'},
    tmp_path / 'curves.png',
  )
  lines = text.splitlines()
  assert lines[0] == f'Training done in 1 h 02 min; results in {tmp_path}'
  assert 'jiangxi 0.966, cellavision n/a' in lines[1]
  assert f'{tmp_path}/eval/jiangxi/report.md' in text
  assert f'{tmp_path}/eval/cellavision/worst.png' in text
  assert f'training curves: {tmp_path}/curves.png' in text
  assert lines[-1].endswith(
    f'python -m wcsegnet_jax.predict --workdir={tmp_path} '
    f'--output={tmp_path}/predictions IMAGE_OR_FOLDER...'
  )
  assert max(len(l) for l in lines if 'predict' not in l and 'report' not in l) < 120


def test_summary_of_a_run_without_a_test_split_says_so(tmp_path):
  text = end_of_run.summary_text(tmp_path, 59.6, {}, {}, None)
  assert text.splitlines() == [
    f'Training done in 1 min 00 s; results in {tmp_path}',
    '  no test split (data.test_fraction=0): nothing evaluated',
    f'Next, segment your own images: python -m wcsegnet_jax.predict --workdir={tmp_path} '
    f'--output={tmp_path}/predictions IMAGE_OR_FOLDER...',
  ]


@pytest.mark.slow
def test_training_ends_with_reports_and_evaluate_needs_no_data_variable(wbc_raw, tmp_path):
  workdir, tfds = tmp_path / 'wd', tmp_path / 'tfds'
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in (records_lib.RAW_DIR_ENV, tfds_builder.TFDS_DIR_ENV)
  }
  env['HOME'] = str(tmp_path / 'home')  # a default ~/tensorflow_datasets would show up here
  # The progress bar is on (smoke's default) but stderr is a pipe: no bar fragments.
  trained = run_main(
    [f'--config={ROOT}/configs/smoke.py', f'--workdir={workdir}'],
    {**env, records_lib.RAW_DIR_ENV: str(wbc_raw[0]), tfds_builder.TFDS_DIR_ENV: str(tfds)},
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  out = trained.stdout
  assert '\r' not in trained.stderr and '%|' not in trained.stderr
  step_lines = [l for l in trained.stderr.splitlines() if '] step ' in l]
  assert step_lines and max(len(l) for l in step_lines) < 200, step_lines
  records = [r for r in run_files.read_metrics(workdir) if 'loss' in r]
  assert records and all(r['learning_rate'] == pytest.approx(1e-3) for r in records)
  for name in ('jiangxi', 'cellavision'):
    folder = workdir / 'eval' / name
    for report in ('report.md', 'figure.png', 'worst.png', 'metrics.json'):
      assert (folder / report).is_file(), report
    assert f'report: {folder / "report.md"}' in out
    dice = json.loads((folder / 'metrics.json').read_text())['paper']['dice']
    assert re.search(rf'{name} {dice:.3f}', out)
  assert (workdir / 'curves.png').is_file() and f'training curves: {workdir}/curves.png' in out
  assert f'python -m wcsegnet_jax.predict --workdir={workdir}' in out.splitlines()[-1]
  saved = json.loads((workdir / 'config.json').read_text())['data']
  assert saved['raw_dir'] == str(wbc_raw[0].resolve()) and saved['tfds_dir'] == str(tfds)

  builds = sorted(p.name for p in (tfds / 'wbc_segmentation').iterdir())
  (workdir / 'eval').rename(tmp_path / 'first_eval')
  evaluated = run_main(
    [f'--config={ROOT}/configs/smoke.py', f'--workdir={workdir}', '--mode=evaluate'], env
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert (workdir / 'eval' / 'jiangxi' / 'report.md').is_file()
  assert sorted(p.name for p in (tfds / 'wbc_segmentation').iterdir()) == builds
  assert not (tmp_path / 'home' / 'tensorflow_datasets').exists()
  assert (
    json.loads((workdir / 'eval' / 'jiangxi' / 'metrics.json').read_text())['paper']
    == (json.loads((tmp_path / 'first_eval' / 'jiangxi' / 'metrics.json').read_text())['paper'])
  )


def test_summary_of_a_fit_on_a_labs_fields_gives_its_figures_and_a_fields_command(tmp_path):
  lab_fit = {'cells': 136, 'cross_validated': 0.86, 'before': 0.787, 'warned': False}
  text = end_of_run.summary_text(tmp_path, 90, {'jiangxi': 0.95}, {}, None, lab_fit, trained=False)
  lines = text.splitlines()
  assert lines[0] == (
    f'Cell typer fitted, the network kept, done in 1 min 30 s; results in {tmp_path}'
  )
  assert lines[2] == (
    "  the lab's 136 typed cells: 0.860 typed right by a typer fitted without their field, "
    "0.787 by the starting model's typer"
  )
  assert lines[-1].endswith(
    f'python -m wcsegnet_jax.predict --workdir={tmp_path} --field_scale=auto '
    f'--output={tmp_path}/predictions FIELDS_OR_FOLDER...'
  )
  worse = end_of_run.summary_text(
    tmp_path, 90, {}, {}, None, {**lab_fit, 'before': 0.9, 'warned': True}
  )
  assert 'fitting did worse: see the warning above' in worse
  # A fit that kept no figures (the network fine-tuned, no typer): still a fields command, at
  # the scale its crops were cut at where one was given.
  assert '--field_scale=auto' in end_of_run.summary_text(tmp_path, 90, {}, {}, None, {})
  fixed = end_of_run.summary_text(tmp_path, 90, {}, {}, None, {}, field_scale='0.387')
  assert '--field_scale=0.387 ' in fixed
