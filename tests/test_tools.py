"""The thin command-line tools: they run and write what they say."""

import json
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from configs import base
from configs import finetune_fields
from conftest import ROOT
from tools import show_augmentations
from tools import typer_variants
from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.evaluation import curves
from wcsegnet_jax.evaluation import run_summary
from wcsegnet_jax.model import models


def run_tool(script, *args):
  return subprocess.run(
    [sys.executable, f'{ROOT}/tools/{script}', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, 'PYTHONPATH': ROOT},
  )


def test_show_augmentations_writes_the_grid(wbc_raw, wbc_tfds_dir, tmp_path):
  out = tmp_path / 'aug.png'
  result = run_tool(
    'show_augmentations.py',
    f'--config={ROOT}/configs/wcseg.py',
    f'--config.data.raw_dir={wbc_raw[0]}',
    f'--config.data.tfds_dir={wbc_tfds_dir}',
    f'--output={out}',
    '--num_images=2',
  )
  assert result.returncode == 0, result.stderr[-2000:]
  grid = cv2.imread(str(out))
  assert grid.shape == (2 * 120 + 4, 8 * 120 + 7 * 4, 3)


def test_figure_grid_has_a_tile_per_augmentation_and_overlays_the_nucleus():
  c = base.get_config()
  rng = np.random.default_rng(0)
  label_map = np.zeros((20, 24), np.uint8)
  label_map[5:15, 6:18] = 3
  example = {'image': np.full((20, 24, 3), 200, np.uint8), 'label_map': label_map}
  names, grid = show_augmentations.figure_grid([example, example], c.augment, rng, gap=4)
  assert names == [
    'original',
    'rotation',
    'width shift',
    'height shift',
    'shear',
    'zoom',
    'flip',
    'all',
  ]
  assert grid.shape == (2 * 20 + 4, 8 * 24 + 7 * 4, 3)
  original = grid[:20, :24]
  np.testing.assert_array_equal(original[0, 0], [200, 200, 200])  # background untouched
  assert original[10, 12, 2] > original[10, 12, 0]  # lymphocyte: blue overlay


def _write_fake_run(workdir, dices):
  workdir.mkdir()
  with open(workdir / run_files.METRICS_FILE, 'w') as f:
    for epoch, dice in enumerate(dices, start=1):
      f.write(json.dumps({'step': 10 * epoch, 'loss': 1.0 / epoch, 'epoch': float(epoch)}) + '\n')
      f.write(json.dumps({'step': 10 * epoch, 'test/jiangxi/dice': dice}) + '\n')


def test_epoch_curves_and_first_epoch_reaching(tmp_path):
  _write_fake_run(tmp_path / 'run', [0.5, 0.97, 0.95, 0.98])
  c = curves.epoch_curves(run_files.read_metrics(tmp_path / 'run'))
  np.testing.assert_array_equal(c['epoch'], [1, 2, 3, 4])
  np.testing.assert_allclose(c['train_loss'], [1, 1 / 2, 1 / 3, 1 / 4])
  assert curves.first_epoch_reaching(c, 'test/jiangxi/dice', 0.96) == 2
  assert curves.first_epoch_reaching(c, 'test/jiangxi/dice', 0.99) is None


def test_plot_curves_tool(tmp_path):
  _write_fake_run(tmp_path / 'a', [0.5, 0.9])
  _write_fake_run(tmp_path / 'b', [0.6, 0.8])
  out = tmp_path / 'curves.png'
  result = run_tool('plot_curves.py', f'--output={out}', f'a={tmp_path / "a"}', str(tmp_path / 'b'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert cv2.imread(str(out)) is not None


def _write_fake_evaluated_run(workdir, dice, times=True):
  _write_fake_run(workdir, [0.9, dice])
  if times:  # add wall-clock times to the records
    lines = (workdir / run_files.METRICS_FILE).read_text().splitlines()
    records = [dict(json.loads(l), time=100.0 + 10 * i) for i, l in enumerate(lines)]
    (workdir / run_files.METRICS_FILE).write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  (workdir / 'eval' / 'jiangxi').mkdir(parents=True)
  per_class = {name: 0.5 for name in ('background', 'neutrophil', 'basophil', 'lymphocyte')}
  support = {'background': 900, 'neutrophil': 60, 'basophil': 0, 'lymphocyte': 40}
  (workdir / 'eval' / 'jiangxi' / 'metrics.json').write_text(
    json.dumps(
      {
        'paper': {'accuracy': 0.99, 'precision': 0.9, 'dice': dice, 'miou': 0.9},
        'per_class': {'dice': per_class, 'support': support},
        'cells': {'cell_accuracy': 1.0},
      }
    )
  )


def test_run_summary_means_over_seeds(tmp_path):
  _write_fake_evaluated_run(tmp_path / 's0', 0.97)
  _write_fake_evaluated_run(tmp_path / 's1', 0.95, times=False)
  summary = run_summary.summarize({'net': [tmp_path / 's0', tmp_path / 's1']}, 'jiangxi')
  mean, std, n = summary['net']['dice']
  assert (round(mean, 6), round(std, 6), n) == (0.96, 0.01, 2)
  assert summary['net']['epochs_to_target'] == (2.0, 0.0, 1)  # s1 never reached 0.96
  assert summary['net']['seconds_to_target'] == (30.0, 0.0, 1)
  table = run_summary.markdown(
    summary, ('dice', 'cell_accuracy', 'epochs_to_target', 'dice_basophil')
  )
  assert (
    '| net | 0.9600 +- 0.0100 | 1.0000 +- 0.0000 | 2.0000 (1 of 2 runs) | n/a |' in table
  )  # the fake runs' test splits hold no basophil


def test_summarize_runs_names_a_run_not_yet_evaluated_in_one_line(tmp_path):
  _write_fake_evaluated_run(tmp_path / 's0', 0.97)
  (tmp_path / 's1').mkdir()  # a run still training: no eval/ yet
  result = run_tool('summarize_runs.py', '--datasets=jiangxi', f'net={tmp_path}/s*')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert f'{tmp_path / "s1"}' in result.stderr and '--mode=evaluate' in result.stderr


@pytest.mark.parametrize('damage', ['no_equals', 'no_match', 'corrupt_report', 'no_log'])
def test_summarize_runs_bad_input_is_one_line(tmp_path, damage):
  _write_fake_evaluated_run(tmp_path / 's0', 0.97)
  report = tmp_path / 's0' / 'eval' / 'jiangxi' / 'metrics.json'
  arg = f'net={tmp_path}/s*'
  if damage == 'no_equals':
    arg = f'{tmp_path}/s*'
  elif damage == 'no_match':
    arg = f'net={tmp_path}/nothing*'
  elif damage == 'corrupt_report':
    report.write_text('{"paper": ')
  else:
    (tmp_path / 's0' / run_files.METRICS_FILE).unlink()
  result = run_tool('summarize_runs.py', '--datasets=jiangxi', arg)
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_per_class_columns_follow_the_runs_classes():
  paper = {'dice_neutrophil': 1, 'dice_basophil': 1, 'dice_lymphocyte': 1, 'cell_accuracy': 1}
  five = {
    'dice_neutrophil': 1,
    'dice_lymphocyte': 1,
    'dice_monocyte': 1,
    'cell_dice': 1,
    'dice_cytoplasm': 1,
    'cell_accuracy': 1,
  }
  assert run_summary.class_metric_keys({'a': paper}) == (
    'dice_neutrophil',
    'dice_basophil',
    'dice_lymphocyte',
    'cell_accuracy',
  )
  assert run_summary.class_metric_keys({'a': paper, 'b': five}) == (
    'dice_neutrophil',
    'dice_basophil',
    'dice_lymphocyte',
    'dice_monocyte',
    'dice_cytoplasm',
    'cell_dice',
    'cell_accuracy',
  )


def test_build_pretrained_trains_exports_and_the_export_scores_what_it_says(
  wbc_raw, wbc_tfds_dir, tmp_path
):
  from wcsegnet_jax.evaluation import evaluate
  from wcsegnet_jax.model import restore
  from wcsegnet_jax.model import shipped_model

  out = tmp_path / 'model'
  result = run_tool(
    'build_pretrained.py',
    f'--config={ROOT}/configs/base.py',
    f'--config.data.raw_dir={wbc_raw[0]}',
    f'--config.data.tfds_dir={wbc_tfds_dir}',
    '--config.data.image_size=32',
    '--config.model.base_width=2',
    '--config.model.num_levels=2',
    '--config.model.blocks_per_stage=1',
    '--config.augment.augment_repeats=1',
    '--config.train.batch_size=4',
    '--config.train.num_epochs=1',
    '--config.train.ema_decay=0.9',
    '--config.train.progress_bar=False',
    f'--workdir={tmp_path / "run"}',
    f'--output={out}',
  )
  assert result.returncode == 0, result.stderr[-2000:]
  config, variables, info = shipped_model.load(out)
  assert info['averaged_parameters'] is True and 'moving average' in (out / 'README.md').read_text()
  # The stored weights are the run's average, rounded as stored.
  saved, _ = restore.load_variables(config, tmp_path / 'run', 'latest')
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3),
    variables['params'],
    jax.device_get(saved['params']),
  )
  # info.json's metrics are those of the stored weights.
  config.data.raw_dir, config.data.tfds_dir = str(wbc_raw[0]), str(wbc_tfds_dir)
  eval_step = jax.jit(evaluate.make_eval_step(models.model_for(config), config))
  for name, _, source in evaluate.eval_sources(config):
    result = evaluate.evaluate_source(eval_step, variables, source, name, 8, jax.device_put)
    dice = evaluate.summarize(result, classes.table_of(config.data))['paper']['dice']
    assert abs(dice - info['test_metrics'][name]['dice']) < 1e-6


def test_make_mosaics_with_a_negative_gap_is_one_line(wbc_raw, tmp_path):
  result = run_tool(
    'make_mosaics.py', f'--raw_dir={wbc_raw[0]}', f'--out={tmp_path / "m"}', '--gap=-50'
  )
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr and '--gap=-50' in result.stderr


def _variant_data(rng, labels, informative: bool) -> tuple[dict, list]:
  """Cached features as typer_variants writes them: 40 training cells, a lab's cells one per
  field, 12 views each; features carry the type (a type-specific offset) or nothing."""
  types = ('neutrophil', 'lymphocyte', 'monocyte')
  width, views = 30, len(typer_variants.ALL_VIEWS)
  centres = rng.normal(0, 3, (len(types), width)) * informative
  train_y = np.arange(40) % len(types)
  lab_x = centres[labels][:, None] + 2.0 + rng.normal(0, 1, (len(labels), views, width))
  data = {
    'train_x': centres[train_y] + rng.normal(0, 1, (40, width)),
    'train_y': train_y,
    'lab_x': lab_x.astype(np.float32),
    'lab_y': labels,
    'lab_groups': np.array([f'f{i:03d}.jpg' for i in range(len(labels))]),
    'cell_types': np.array(types),
    'l2': 0.01,
    'field_weight': 20.0,
  }
  typed = [
    typed_fields.TypedField(
      typer_variants.pathlib.Path(g), (typed_fields.TypedCell(types[y], (0, 0, 9, 9)),)
    )
    for g, y in zip(data['lab_groups'], labels)
  ]
  return data, typed


def test_typer_variants_score_each_lab_cell_with_its_fold_held_out():
  # Three variants that cover the paths: the fit as shipped, views fitted and averaged, and
  # each source standardized to itself (its own statistics from the fitting cells only).
  variants = [typer_variants.VARIANTS[i] for i in (0, 6, -1)]
  rng = np.random.default_rng(0)
  labels = np.arange(30) % 3
  data, typed = _variant_data(rng, labels, informative=True)
  for variant in variants:
    assert typer_variants.type_right(data, variant, typed, 0, 3) >= 0.9, variant.name
  # Features that say nothing of the type (30 of them for 20 fitting lab cells: a fit scored on
  # its own cells would be right on all of them): held out, chance.
  data, typed = _variant_data(rng, rng.permutation(labels), informative=False)
  scores = [typer_variants.type_right(data, v, typed, 0, 3) for v in variants]
  assert max(scores) < 0.65 and np.mean(scores) < 0.5


def test_typer_variants_name_a_features_file_they_cannot_read(tmp_path):
  bad = tmp_path / 'features.npz'
  bad.write_bytes(b'PK\x03\x04 cut short')
  with pytest.raises(errors.UserError, match='features.npz: not a features file'):
    typer_variants.read_cache(bad)
  np.savez(bad, train_x=np.zeros(3))  # another file's arrays
  with pytest.raises(errors.UserError, match='not a features file'):
    typer_variants.read_cache(bad)


def test_typer_variants_refuse_features_pooled_otherwise_than_the_fit():
  """A cache of the shipped typer's stages (none) is not what configs/finetune_fields.py fits
  with (the net's features too): refused by name, not scored as if it were."""
  config = finetune_fields.get_config()
  fitted = {'levels': np.array(sorted(cell_typing.levels_of(config))), 'crop_color': 'field'}
  typer_variants.check_fitting(typer_variants.pathlib.Path('f.npz'), fitted, config)
  for other in ({**fitted, 'levels': np.array([], str)}, {**fitted, 'crop_color': 'crop'}):
    with pytest.raises(errors.UserError, match=r'f.npz: features of stages .* remove it'):
      typer_variants.check_fitting(typer_variants.pathlib.Path('f.npz'), other, config)


def test_cross_lab_fields_scores_a_shipped_model_by_name(tmp_path):
  """`cross_lab.py fields --model=NAME` scores that shipped model (here on blank fields: the
  cells are missed, none is made up); with --workdir too it is one line."""
  from test_typed_fields import make_fields_folder  # pylint: disable=g-import-not-at-top

  folder = make_fields_folder(
    tmp_path / 'lab', ['a.jpg,neutrophil,4,4,30,30', 'b.png,lymphocyte,10,10,40,40']
  )
  out = tmp_path / 'scored'
  args = ('fields', f'--fields_dir={folder}', '--field_scale=1.0', f'--output={out}')
  result = run_tool('cross_lab.py', *args, '--model=paper')
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(out.with_suffix('.json').read_text())
  assert record['model'].startswith('the pretrained model in ')
  assert record['model'].split(',')[0].endswith('paper')
  assert record['summary']['found'] == 0.0 and record['summary']['false_cells_per_field'] == 0.0
  both = run_tool('cross_lab.py', *args, '--model=paper', f'--workdir={tmp_path}')
  assert both.returncode != 0
  assert 'Traceback' not in both.stderr and '--model=paper' in both.stderr
  assert len(both.stderr.strip().splitlines()) == 1, both.stderr


def test_make_mosaics_takes_a_shipped_model_or_a_run_not_both(wbc_raw, tmp_path):
  result = run_tool(
    'make_mosaics.py',
    f'--raw_dir={wbc_raw[0]}',
    f'--out={tmp_path / "m"}',
    '--model=paper',
    f'--workdir={tmp_path}',
  )
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'not both' in result.stderr and not (tmp_path / 'm').exists()
