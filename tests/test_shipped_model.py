"""Tests of the pretrained model shipped in the package (wcsegnet_jax/pretrained/).

Its weights are what a lab runs first, so the tests check what it promises: a valid config that
is the CPU recipe's, a file within the size limit whose checksum holds, predictions with no
workdir, evaluation through `--checkpoint=pretrained`, and, on the real data where this machine
has it, the very metrics its info.json reports, recomputed from the raw test images.
"""

import csv
import json
import shutil
import types

import jax
import numpy as np
import pytest

import conftest
import fixtures
from configs import cpu
from configs import pretrained as pretrained_config
from wcsegnet_jax.cells import cell_typing
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import held_out
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import records as records_lib
from wcsegnet_jax.evaluation import evaluate
from wcsegnet_jax.inference import prediction
from wcsegnet_jax.inference.options import PredictOptions
from wcsegnet_jax.model import models
from wcsegnet_jax.model import restore
from wcsegnet_jax.model import shipped_model
from wcsegnet_jax.training import typer_fitting

MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope='module')
def shipped():
  return shipped_model.load()


def test_shipped_config_is_valid_and_is_the_cpu_recipe(shipped):
  config, _, _ = shipped
  assert config_checks.problems(config) == []
  recipe = cpu.get_config()
  assert config.model.to_dict() == recipe.model.to_dict() | {
    'decoder_dropout_stages': list(recipe.model.decoder_dropout_stages)
  }
  assert config.data.image_size == recipe.data.image_size
  assert config.data.raw_dir == '' and config.data.tfds_dir == ''  # no builder's paths
  for_evaluation = pretrained_config.get_config()
  assert for_evaluation.eval.checkpoint == 'pretrained'  # its config fits no other weights
  for_evaluation.eval.checkpoint = config.eval.checkpoint
  assert for_evaluation.to_dict() == config.to_dict()


def test_shipped_files_are_small_and_documented(shipped):
  config, variables, info = shipped
  path = shipped_model.PRETRAINED_DIR / shipped_model.VARIABLES_FILE
  assert path.stat().st_size <= MAX_BYTES
  assert info['variables_bytes'] == path.stat().st_size
  assert info['parameters'] == models.count_params(variables['params'])
  assert 'GPL-3.0' in info['licence'] and 'build_pretrained.py' in info['command']
  for dataset in ('jiangxi', 'cellavision'):
    m = info['test_metrics'][dataset]
    assert 0 <= m['dice'] <= 1 and 0 <= m['cell_accuracy'] <= 1
    train, test = info['images'][dataset]['train'], info['images'][dataset]['test']
    assert train and test and not set(train) & set(test)
    assert m['n_images'] == len(test)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))


def test_predict_without_workdir_uses_the_shipped_model(tmp_path):
  rng = np.random.default_rng(3)
  fixtures.write_rgb(tmp_path / 'cell.png', fixtures.cell_image(rng, fixtures.cell_mask(rng, 90)))
  summary = prediction.run([str(tmp_path / 'cell.png')], PredictOptions(output=tmp_path / 'out'))
  assert summary.done == [str(tmp_path / 'cell.png')]
  mask = image_files.read_rgb(tmp_path / 'out' / 'cell_mask.png')
  assert mask.shape == (90, 90, 3)


def test_evaluate_pretrained_on_a_folder(tmp_path):
  fixtures.make_folder_raw(tmp_path / 'held_out', with_labels_csv=False)
  config = pretrained_config.get_config('paper')  # the folder's masks: the paper's classes
  config.eval.raw_dir = str(tmp_path / 'held_out')
  written = evaluate.evaluate_checkpoint(config, str(tmp_path / 'eval'))  # its eval.checkpoint
  assert config.eval.tta  # the pretrained model is evaluated over flips, as it was measured
  # Its own decoding too (eval.decode): the folder names both.
  name = held_out.report_name(tmp_path / 'held_out')
  report = tmp_path / 'eval' / 'eval' / evaluate.report_folder(name, config, False)
  assert report.name.endswith('-tta-by_part')
  assert (report / 'metrics.json').is_file() and (report / 'report.md').is_file()
  assert written[name]['n_images'] == 8
  # Keeping the central cell only: its own reports; it can only take nucleus pixels away.
  before = (report / 'metrics.json').read_bytes()
  config.eval.central_cell_radius = 7
  central = evaluate.evaluate_checkpoint(config, str(tmp_path / 'eval'))[name]
  folder = report.with_name(report.name + '-central7')
  assert tmp_path / 'eval' / 'eval' / evaluate.report_folder(name, config, False) == folder
  assert (folder / 'metrics.json').is_file() and central['central_cell_radius'] == 7
  assert (report / 'metrics.json').read_bytes() == before  # the other report is left alone
  assert central['paper']['recall'] <= written[name]['paper']['recall']
  assert central['n_images'] == 8


def test_pretrained_with_another_model_config_is_refused(tmp_path):
  config = pretrained_config.get_config()
  config.model.base_width = 8
  with pytest.raises(errors.CheckpointError, match='model.base_width'):
    restore.load_variables(config, tmp_path, 'pretrained')


@pytest.mark.parametrize(
  'damage',
  [
    'missing_variables',
    'corrupt_variables',
    'bad_config_json',
    'config_not_a_config',
    'missing_info',
    'info_without_checksum',
  ],
)
def test_damaged_model_files_are_named(tmp_path, damage):
  folder = tmp_path / 'model'
  shutil.copytree(shipped_model.PRETRAINED_DIR, folder)
  variables = folder / shipped_model.VARIABLES_FILE
  if damage == 'missing_variables':
    variables.unlink()
    expected = f'{variables}: the pretrained model file is missing'
  elif damage == 'corrupt_variables':
    data = bytearray(variables.read_bytes())
    data[len(data) // 2] ^= 0xFF
    variables.write_bytes(bytes(data))
    expected = f'{variables}: corrupt'
  elif damage == 'bad_config_json':
    (folder / shipped_model.CONFIG_FILE).write_text('{"model": ')
    expected = f'{folder / shipped_model.CONFIG_FILE}: not valid JSON'
  elif damage == 'config_not_a_config':
    (folder / shipped_model.CONFIG_FILE).write_text('{"model": 3}')
    expected = f'{folder / shipped_model.CONFIG_FILE}: not a usable config'
  elif damage == 'missing_info':
    (folder / shipped_model.INFO_FILE).unlink()
    expected = f'{folder / shipped_model.INFO_FILE}: the pretrained model file is missing'
  else:
    info = json.loads((folder / shipped_model.INFO_FILE).read_text())
    del info['variables_sha256']
    (folder / shipped_model.INFO_FILE).write_text(json.dumps(info))
    expected = f'{folder / shipped_model.INFO_FILE}: has no variables_sha256'
  with pytest.raises(shipped_model.PretrainedModelError) as e:
    shipped_model.load(folder)
  assert str(e.value).startswith(expected)


def test_export_round_trips(tmp_path, shipped):
  config, variables, info = shipped
  out = shipped_model.export(config, variables, tmp_path / 'copy', {'step': info['step']})
  config2, variables2, info2 = shipped_model.load(out)
  assert config2.to_dict() == config.to_dict()
  assert info2['variables_sha256'] == info['variables_sha256']  # already float16-rounded
  jax.tree.map(np.testing.assert_array_equal, variables, variables2)


def _real_test_records(shipped, dataset: str) -> list:
  """The real test images of the shipped model's split of `dataset` (skips where any lacks)."""
  config, _, info = shipped
  test_ids = set(info['images'][dataset]['test'])
  records = [
    r
    for r in records_lib.list_raw_records(
      dataset, conftest.REAL_WBC_DIR, classes.table_of(config.data)
    )
    if r.file_id in test_ids
  ]
  if len(records) != len(test_ids):
    pytest.skip(f'this copy of the data lacks some of the {dataset} test images')
  return records


@pytest.mark.skipif(not conftest.REAL_WBC_DIR.is_dir(), reason='no real WBC data here')
@pytest.mark.parametrize('dataset', ['jiangxi', 'cellavision'])
def test_shipped_metrics_recomputed_from_the_real_test_images(shipped, dataset):
  """The model types the real test images as its info.json says, image for image."""
  config, variables, info = shipped
  table = classes.table_of(config.data)
  records = _real_test_records(shipped, dataset)
  eval_step = jax.jit(
    evaluate.make_eval_step(models.create_model(config.model, table.num_classes), config)
  )
  result = evaluate.evaluate_source(
    eval_step,
    variables,
    held_out.RawExamples(records, config.data),
    dataset,
    config.eval.batch_size,
    jax.device_put,
  )
  summary = evaluate.summarize(result, table)
  expected = info['test_metrics'][dataset]
  assert summary['paper']['dice'] == pytest.approx(expected['dice'], abs=1e-4)
  assert summary['cells']['cell_accuracy'] == pytest.approx(expected['cell_accuracy'])
  predicted = evaluate.predicted_cell_types(result.confusion, table)
  majority_baseline = np.max(np.bincount(result.cell_types)) / len(result.cell_types)
  assert np.mean(predicted == result.cell_types) > majority_baseline  # it reads the cells


@pytest.mark.skipif(not conftest.REAL_WBC_DIR.is_dir(), reason='no real WBC data here')
def test_predict_types_real_test_cells_like_their_labels(shipped, tmp_path):
  """The predict command, shipped model, no workdir: real Jiangxi test cells of both types
  come back with their labelled type (the model types all 36 Jiangxi test cells right)."""
  _, _, info = shipped
  test_ids = set(info['images']['jiangxi']['test'])
  records = [
    r
    for r in records_lib.list_raw_records('jiangxi', conftest.REAL_WBC_DIR, classes.PAPER_TABLE)
    if r.file_id in test_ids
  ]
  chosen = [r for r in records if r.cell_type == 'neutrophil'][:2] + [
    r for r in records if r.cell_type == 'lymphocyte'
  ][:2]
  if len(chosen) < 4:
    pytest.skip('this copy of the data lacks the Jiangxi test images')
  summary = prediction.run(
    [str(r.image_path) for r in chosen], PredictOptions(output=tmp_path / 'out')
  )
  assert len(summary.done) == 4
  with open(tmp_path / 'out' / 'cells.csv', newline='') as f:
    predicted = {row['file']: row['predicted_type'] for row in csv.DictReader(f)}
  assert {str(r.image_path): r.cell_type for r in chosen} == predicted


def test_shipped_typer_types_its_model_cells(shipped):
  config, variables, _ = shipped
  typer = cell_typing.load_typer(shipped_model.PRETRAINED_DIR, config, variables)
  assert typer is not None and typer.linear.cell_types == classes.table_of(config.data).cell_types
  assert 0.25 <= typer.linear.temperature <= 8 and 0 < typer.uncertain_below < 1
  assert 'fit_cell_typer.py' in typer.linear.info['command']


@pytest.mark.skipif(not conftest.REAL_WBC_DIR.is_dir(), reason='no real WBC data here')
@pytest.mark.parametrize('dataset', ['jiangxi', 'cellavision'])
def test_shipped_typer_accuracy_recomputed_from_the_real_test_images(shipped, dataset):
  """The shipped cell typer types the real test cells as its cell_typer.json says."""
  config, variables, _ = shipped
  records = _real_test_records(shipped, dataset)
  typer = cell_typing.load_typer(shipped_model.PRETRAINED_DIR, config, variables)
  source = types.SimpleNamespace(name=dataset, test=held_out.RawExamples(records, config.data))
  crops = typer_fitting.dataset_crops([source], 'test', config, 1, 0)
  right = typer.linear.probabilities(typer.features(crops.crops)[0]).argmax(1) == crops.labels
  assert right.mean() == pytest.approx(typer.linear.info['test'][dataset]['accuracy'])
