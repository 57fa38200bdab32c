"""Tests of --mode=evaluate: checkpoint restore, reports per dataset, raw folders, clear errors.

A tiny model (width 2, one level, 32x32 images, 4 steps) is trained once per session on the
generated WBC-layout data (tests/fixtures.py); tests/test_predict.py reuses it through
`trained_tiny_model`.
"""

import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixtures
from configs import base
from configs import smoke
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import held_out
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import normalize
from wcsegnet_jax.evaluation import evaluate
from wcsegnet_jax.evaluation import reports
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.model import metrics
from wcsegnet_jax.model import models
from wcsegnet_jax.model import probabilities
from wcsegnet_jax.model import restore

ROOT = pathlib.Path(__file__).resolve().parents[1]
# configs/smoke.py made smaller still; given to training in-process and to the command line.
TINY = {
  'model.base_width': 2,
  'model.num_levels': 1,
  'model.decoder_dropout_stages': (0,),
  'data.image_size': 32,
  'train.max_steps': 4,
  'train.batch_size': 8,
  'train.progress_bar': False,
  'eval.batch_size': 4,
  'eval.figure_rows': 3,
  'eval.worst_k': 2,
}
REPORT_FILES = ('metrics.json', 'report.md', 'figure.png', 'worst.png', 'per_image.csv')


def tiny_config(raw_dir, tfds_dir, **more):
  config = smoke.get_config()
  config.name = 'tiny'
  for dotted, value in {
    **TINY,
    'data.raw_dir': str(raw_dir),
    'data.tfds_dir': str(tfds_dir),
    **more,
  }.items():
    section, key = dotted.split('.')
    setattr(config[section], key, value)
  return config


def config_flags(raw_dir, tfds_dir, **more) -> list[str]:
  """The command-line flags giving the same config as `tiny_config`."""
  values = {**TINY, 'data.raw_dir': str(raw_dir), 'data.tfds_dir': str(tfds_dir), **more}
  return ['--config=configs/smoke.py', '--config.name=tiny'] + [
    f'--config.{k}={v}' for k, v in values.items()
  ]


def trained_tiny_model(tmp_path_factory) -> dict:
  """Generates data and trains the tiny model, once per session (reused by other modules)."""
  base = tmp_path_factory.getbasetemp() / 'tiny_model'
  paths = {'workdir': base / 'workdir', 'raw_dir': base / 'wbc_raw', 'tfds_dir': base / 'tfds'}
  if not (base / 'trained').exists():
    from wcsegnet_jax.training import train  # pylint: disable=g-import-not-at-top

    fixtures.make_wbc_raw(paths['raw_dir'])
    train.train_and_evaluate(
      tiny_config(paths['raw_dir'], paths['tfds_dir']), str(paths['workdir'])
    )
    (base / 'trained').write_text('ok')
  return paths


def run_command(module: str, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
  return trained_tiny_model(tmp_path_factory)


@pytest.fixture(scope='module')
def evaluated(tiny_model):
  """`--mode=evaluate` of the last step, run once through the command line."""
  proc = run_command(
    'wcsegnet_jax.main',
    '--mode=evaluate',
    '--checkpoint=latest',
    f'--workdir={tiny_model["workdir"]}',
    *config_flags(tiny_model['raw_dir'], tiny_model['tfds_dir']),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _unit_interval_values(tree, path=''):
  """(path, value) of every float in a metrics summary that should lie in [0, 1]."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k not in (
        'loss',
        'std',
        'support',
        'confusion_matrix',
        'n_images',
        'n_undefined',
        'n_cells',
        'n_no_nucleus_predicted',
        'image_size',
        'checkpoint_step',
      ):
        yield from _unit_interval_values(v, f'{path}.{k}')
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _unit_interval_values(v, f'{path}[{i}]')
  elif isinstance(tree, float):
    yield path, tree


def test_evaluate_command_writes_reports_per_dataset(evaluated, tiny_model):
  for name in ('jiangxi', 'cellavision'):
    out = tiny_model['workdir'] / 'eval' / name
    for f in REPORT_FILES:
      assert (out / f).is_file() and (out / f).stat().st_size > 0, out / f
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]
    m = json.loads((out / 'metrics.json').read_text())
    assert m['dataset'] == name and m['config_name'] == 'tiny' and m['tta'] is False
    assert m['checkpoint_step'] == 4 and m['n_images'] > 0
    values = list(
      _unit_interval_values(
        {k: m[k] for k in ('paper', 'per_class', 'per_image', 'cells', 'worst')}
      )
    )
    assert values
    for path, value in values:
      assert 0.0 <= value <= 1.0, (path, value)
    assert len(m['worst']) == min(TINY['eval.worst_k'], m['n_images'])
    report = (out / 'report.md').read_text()
    paper_dice = {'jiangxi': '0.9653', 'cellavision': '0.9662'}[name]
    assert f'| WCSegNet (paper) | n/a | n/a | n/a | {paper_dice} |' in report
    assert '| Method | Accuracy | Precision | Recall | Dice | mIoU |' in report
    image = cv2.imread(str(out / 'figure.png'))
    rows = min(TINY['eval.figure_rows'], m['n_images'])
    assert image is not None and image.shape[0] >= 200 * rows  # one row of panels per image
  # The summary table on stdout names both datasets.
  assert 'jiangxi' in evaluated.stdout and 'cellavision' in evaluated.stdout


def test_evaluate_matches_training_metrics(evaluated, tiny_model):
  """The last training evaluation and --mode=evaluate of that step report the same Dice."""
  lines = [
    json.loads(line) for line in (tiny_model['workdir'] / 'metrics.jsonl').read_text().splitlines()
  ]
  last = [l for l in lines if l['step'] == 4 and 'test/jiangxi/dice' in l][-1]
  m = json.loads((tiny_model['workdir'] / 'eval' / 'jiangxi' / 'metrics.json').read_text())
  assert math.isclose(m['paper']['dice'], last['test/jiangxi/dice'], rel_tol=1e-5)


def test_evaluate_raw_dir_command(tiny_model, tmp_path):
  """--config.eval.raw_dir on a WBC-layout folder: every image of each subset is evaluated."""
  raw_dir = tmp_path / 'more_cells'
  manifest = fixtures.make_wbc_raw(raw_dir, n_per_type={1: 2, 2: 1, 5: 1}, seed=3)
  workdir = tmp_path / 'reports_here'
  proc = run_command(
    'wcsegnet_jax.main',
    '--mode=evaluate',
    f'--workdir={workdir}',
    f'--checkpoint={tiny_model["workdir"] / "checkpoints" / "2"}',
    *config_flags(tiny_model['raw_dir'], tiny_model['tfds_dir'], **{'eval.raw_dir': str(raw_dir)}),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  name = held_out.report_name(raw_dir)
  for source in ('jiangxi', 'cellavision'):
    m = json.loads((workdir / 'eval' / f'{name}-{source}' / 'metrics.json').read_text())
    # Images with the ids of the model's training images are reported apart (their own folder).
    seen = workdir / 'eval' / f'{name}-{source}-training_images' / 'metrics.json'
    apart = json.loads(seen.read_text())['n_images'] if seen.is_file() else 0
    assert m['n_images'] + apart == len(manifest[source])
    assert m['checkpoint_step'] == 2


def test_evaluate_folder_layout_with_tta(tiny_model, tmp_path):
  """A plain images/ + masks/ folder (layout auto-detected), evaluated in-process with TTA."""
  folder = tmp_path / 'my_folder'
  written = fixtures.make_folder_raw(folder)
  kept = [f for f in written if f.cell_type in ('neutrophil', 'basophil', 'lymphocyte')]
  config = tiny_config(
    tiny_model['raw_dir'], tiny_model['tfds_dir'], **{'eval.raw_dir': str(folder), 'eval.tta': True}
  )
  out = evaluate.evaluate_checkpoint(config, str(tmp_path / 'wd'), str(tiny_model['workdir']))
  name = held_out.report_name(folder)
  assert list(out) == [name] and name.startswith('held_out/my_folder-')
  assert out[name]['n_images'] == len(kept) and out[name]['tta'] is True
  report = (tmp_path / 'wd' / 'eval' / f'{name}-tta' / 'report.md').read_text()
  assert '(paper)' not in report  # no paper rows for a dataset the paper did not use


def test_held_out_folders_never_overwrite_a_datasets_or_each_others_reports(tiny_model, tmp_path):
  """A held-out folder named jiangxi wrote over eval/jiangxi/ (the dataset's test report), and
  two folders of one name over each other; each now has its own folder under eval/held_out/."""
  workdir = tmp_path / 'wd'
  config = tiny_config(tiny_model['raw_dir'], tiny_model['tfds_dir'])
  evaluate.evaluate_checkpoint(config, str(workdir), str(tiny_model['workdir']))
  test_report = (workdir / 'eval' / 'jiangxi' / 'metrics.json').read_bytes()
  folders = [tmp_path / lab / 'jiangxi' for lab in ('lab_a', 'lab_b')]
  for seed, folder in enumerate(folders):
    fixtures.make_folder_raw(folder, size=60 + 10 * seed)
    config.eval.raw_dir = str(folder)
    evaluate.evaluate_checkpoint(config, str(workdir), str(tiny_model['workdir']))
  assert (workdir / 'eval' / 'jiangxi' / 'metrics.json').read_bytes() == test_report
  reports = [workdir / 'eval' / held_out.report_name(f) / 'metrics.json' for f in folders]
  assert reports[0] != reports[1] and all(r.is_file() for r in reports)
  assert reports[0].read_bytes() != reports[1].read_bytes()


def test_evaluate_without_checkpoint_is_a_clear_error(tiny_model, tmp_path):
  empty = tmp_path / 'never_trained'
  empty.mkdir()
  proc = run_command(
    'wcsegnet_jax.main',
    '--mode=evaluate',
    f'--workdir={empty}',
    *config_flags(tiny_model['raw_dir'], tiny_model['tfds_dir']),
  )
  assert proc.returncode == 2
  assert str(empty) in proc.stderr and 'Traceback' not in proc.stderr


def test_load_variables_checkpoint_forms(tiny_model):
  config = tiny_config(tiny_model['raw_dir'], tiny_model['tfds_dir'])
  workdir = tiny_model['workdir']
  # A workdir or its checkpoints/ named as a path means its latest step, as the defaults do.
  for checkpoint, step in (
    ('best', None),
    ('latest', 4),
    ('2', 2),
    (workdir, 4),
    (workdir / 'checkpoints', 4),
    (workdir / 'checkpoints' / '2', 2),
  ):
    variables, got = restore.load_variables(config, workdir, str(checkpoint))
    assert set(variables) == {'params', 'batch_stats'}
    assert got in (2, 4) and (step is None or got == step)
  with pytest.raises(errors.CheckpointError, match='not in'):
    restore.load_variables(config, workdir, '99')
  other = tiny_config(tiny_model['raw_dir'], tiny_model['tfds_dir'], **{'model.activation': 'relu'})
  with pytest.raises(errors.CheckpointError, match='model.activation'):
    restore.load_variables(other, workdir, 'latest')


@pytest.mark.parametrize('how', ['truncated', 'deleted', 'no_metadata', 'no_state'])
def test_a_damaged_latest_checkpoint_names_itself_and_the_intact_step(tiny_model, tmp_path, how):
  """Evaluation and prediction restore through load_variables: a damaged step is one error
  naming it and the intact step to pass instead, and nothing is deleted."""
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_model['workdir'], workdir)
  fixtures.damage_checkpoint(workdir / 'checkpoints' / '4', how)
  config = tiny_config(tiny_model['raw_dir'], tiny_model['tfds_dir'])
  with pytest.raises(errors.CheckpointError) as err:
    restore.load_variables(config, workdir, 'latest')
  assert str(err.value).startswith(f'checkpoint {workdir}/checkpoints/4 is damaged (')
  assert f'step 2 is intact: pass --checkpoint={workdir}/checkpoints/2.' in str(err.value)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
  _, step = restore.load_variables(config, workdir, str(workdir / 'checkpoints' / '2'))
  assert step == 2


def test_evaluate_with_a_damaged_checkpoint_is_one_line(tiny_model, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_model['workdir'], workdir)
  fixtures.damage_checkpoint(workdir / 'checkpoints' / '4', 'truncated')
  proc = run_command(
    'wcsegnet_jax.main',
    '--mode=evaluate',
    f'--workdir={workdir}',
    *config_flags(tiny_model['raw_dir'], tiny_model['tfds_dir']),
  )
  assert proc.returncode == 2
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith(f'error: checkpoint {workdir}/checkpoints/4 is damaged')
  )
  assert 'Traceback' not in proc.stderr and 'Event loop' not in proc.stderr


def test_paper_table_holds_only_known_values():
  known = {
    ('jiangxi', 'WCSegNet'): {'dice': 0.9653, 'miou': 0.9599},
    ('cellavision', 'WCSegNet'): {'dice': 0.9662, 'miou': 0.9609},
    ('jiangxi', 'Fan et al. 2019'): {'dice': 0.982},
    ('cellavision', 'Fan et al. 2019'): {'dice': 0.982},
  }
  for dataset, rows in reports.PAPER_TABLE1.items():
    for method, values in rows:
      assert values == known.get((dataset, method), {}), (dataset, method)


def test_figure_and_worst_selection():
  types = np.array([1, 1, 1, 3, 3, 2])
  assert reports.figure_indices(types, 4) == [0, 5, 3, 1]
  assert reports.worst_indices(np.array([0.9, 0.1, 0.5, 0.1]), 3) == [1, 3, 2]
  png = reports.figure_png(
    np.zeros((2, 8, 8, 3), np.uint8),
    np.zeros((2, 8, 8), np.uint8),
    np.ones((2, 8, 8), np.uint8),
    ['a', 'b'],
    'title',
  )
  assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) is not None


def test_encode_png_round_trips(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
  path = tmp_path / 'grid.png'
  files.write_bytes_atomic(path, image_files.encode_png(rgb))
  np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), rgb)
  assert [p.name for p in tmp_path.iterdir()] == ['grid.png']


def test_format_number():
  assert reports.format_number(None) == 'n/a'
  assert reports.format_number(np.int64(12)) == '12'  # counts stay integers
  assert reports.format_number(0.96531) == '0.9653'
  assert reports.format_number(0.5, digits=1) == '0.5'
  # digits=None: about four significant digits, whatever the scale.
  assert [reports.format_number(v, None) for v in (1234.5, 123.45, 1.2345, 0.012345)] == [
    '1234',
    '123.5',
    '1.23',
    '0.012',
  ]
  assert reports.format_number(None, None, missing='-') == '-'


def test_markdown_table():
  table = reports.markdown_table(['run', 'dice'], [['a', 0.5], ['b', 'n/a']], right_aligned=[1])
  assert table.splitlines() == ['| run | dice |', '| --- | ---: |', '| a | 0.5 |', '| b | n/a |']


def test_predicted_cell_types_vote_the_predicted_pixels():
  labels = np.array([[[1, 1], [1, 0]], [[2, 2], [0, 0]], [[3, 0], [0, 0]]])
  preds = np.array([[[1, 2], [2, 0]], [[0, 0], [0, 0]], [[3, 1], [0, 0]]])
  per_image = np.asarray(metrics.per_image_confusion(labels, preds), np.int64)
  # 2 basophil pixels beat 1 neutrophil; no nucleus predicted: 0; a 1-1 tie: the smaller id.
  np.testing.assert_array_equal(
    evaluate.predicted_cell_types(per_image, classes.PAPER_TABLE), [2, 0, 1]
  )
  assert [metrics.predicted_cell_type(p)[0] for p in preds] == [2, 0, 1]


def test_load_variables_with_another_lr_schedule(tiny_model):
  """A cosine schedule adds optimizer state; evaluation reads only parameters and BatchNorm
  statistics, so the optimizer that trained a checkpoint does not matter."""
  config = tiny_config(
    tiny_model['raw_dir'], tiny_model['tfds_dir'], **{'train.lr_schedule': 'cosine'}
  )
  variables, step = restore.load_variables(config, tiny_model['workdir'], 'latest')
  assert step == 4 and 'params' in variables
  no_config = tiny_model['workdir'].parent / 'no_config_copy'
  if not no_config.exists():
    shutil.copytree(tiny_model['workdir'] / 'checkpoints', no_config / 'checkpoints')
  variables, step = restore.load_variables(config, no_config, 'latest')  # falls back
  assert step == 4


def test_another_model_without_config_json_is_one_readable_error(tiny_model, tmp_path):
  """No config.json to compare with: the differing shapes are named, not orbax's tree dump."""
  no_config = tmp_path / 'copy'
  shutil.copytree(tiny_model['workdir'] / 'checkpoints', no_config / 'checkpoints')
  other = tiny_config(tiny_model['raw_dir'], tiny_model['tfds_dir'], **{'model.base_width': 3})
  with pytest.raises(errors.CheckpointError) as err:
    restore.load_variables(other, no_config, 'latest')
  message = str(err.value)
  assert re.search(
    r'holds another model than this config: .*\(.*\) in the checkpoint, '
    r'\(.*\) here',
    message,
  ), message
  assert 'pass the --config it was trained with' in message
  assert 'partial_restore' not in message and len(message) < 1000


def test_shape_mismatches_names_each_difference():
  saved = {'params': {'a': np.zeros((2, 3)), 'b': np.zeros(4), 'old': np.zeros(1)}}
  wanted = {'params': {'a': np.zeros((2, 3)), 'b': np.zeros(5), 'new': np.zeros(1)}}
  assert checkpoints.shape_mismatches(saved, wanted) == [
    'params/b (4,) in the checkpoint, (5,) here',
    'params/new missing in the checkpoint',
    'params/old in the checkpoint only',
  ]
  assert checkpoints.shape_mismatches(saved, saved) == []


def test_evaluation_checks_model_and_data_but_not_where_data_lives():
  saved, current = base.get_config(), base.get_config()
  current.data.raw_dir, current.data.datasets = '/elsewhere', ('cellavision',)
  current.model.head_dropout, current.train.learning_rate = 0.0, 1.0  # training-only
  current.data.std = (0.3, 0.3, 0.3)
  current.model.patch_size = 2
  as_dict = lambda c: json.loads(c.to_json())
  assert config_lib.config_mismatches(
    as_dict(saved), as_dict(current), config_keys.EVAL_FREE, within=config_keys.EVAL_CHECKED
  ) == ['data.std: [0.25, 0.25, 0.25] -> [0.3, 0.3, 0.3]', 'model.patch_size: 1 -> 2']


# --- the device paths: TTA as one batch, splits uploaded once, only small results fetched ------


def _random_model(tta: bool, seed: int = 0):
  """The tiny net of TINY with random parameters and BatchNorm statistics away from (0, 1), so
  eval-mode BatchNorm would show any mixing of the images of a batch."""
  config = tiny_config('', '', **{'eval.tta': tta, 'model.block_norm': 'batch'})
  model = models.create_model(config.model, 4)
  variables = model.init(jax.random.key(seed), np.zeros((1, 32, 32, 3), np.float32), train=False)
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), variables)
  return config, model, variables


def _fake_source(n: int, size: int = 32, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [
    {
      'image': rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
      'label_map': rng.integers(0, 4, (size, size), dtype=np.uint8),
      'cell_type': int(rng.integers(1, 4)),
      'file_id': f'{i:03d}',
    }
    for i in range(n)
  ]


def test_tta_in_one_batch_equals_the_average_of_four_passes():
  config, model, variables = _random_model(tta=True)
  images = np.stack([e['image'] for e in _fake_source(3)])
  x = normalize.normalize_images(images, config.data.mean, config.data.std)
  probs = lambda y: jax.nn.softmax(model.apply(variables, y, train=False), axis=-1)
  four_passes = (
    sum(jnp.flip(probs(jnp.flip(x, axes)), axes) for axes in ((), (2,), (1,), (1, 2))) / 4
  )
  one_batch = probabilities.predict_probs(model, variables, images, config.data, tta=True)
  assert one_batch.shape == (3, 32, 32, 4)
  np.testing.assert_allclose(one_batch, four_passes, atol=1e-6)
  plain = probabilities.predict_probs(model, variables, images, config.data, tta=False)
  assert float(jnp.abs(plain - one_batch).max()) > 1e-4  # the flips do change the answer


def test_tta_with_rotations_averages_the_eight_symmetries_and_commutes_with_them():
  config, model, variables = _random_model(tta=True)
  images = np.stack([e['image'] for e in _fake_source(3)])
  x = normalize.normalize_images(images, config.data.mean, config.data.std)
  probs = lambda y: jax.nn.softmax(model.apply(variables, y, train=False), axis=-1)
  turn = lambda y, k: jnp.rot90(y, k, axes=(1, 2))
  eight_passes = (
    sum(turn(jnp.flip(probs(jnp.flip(turn(x, k), m)), m), -k) for k in range(4) for m in ((), (2,)))
    / 8
  )
  rotated = lambda imgs: probabilities.predict_probs(
    model, variables, imgs, config.data, tta=True, rotations=True
  )
  one_batch = rotated(images)
  np.testing.assert_allclose(one_batch, eight_passes, atol=1e-6)
  # Averaged over the whole group, the prediction of a turned image is the turned prediction;
  # the four flips alone do not give that for a quarter turn.
  np.testing.assert_allclose(
    rotated(np.rot90(images, 1, axes=(1, 2))), turn(one_batch, 1), atol=1e-5
  )
  flips = probabilities.predict_probs(model, variables, images, config.data, tta=True)
  turned_flips = probabilities.predict_probs(
    model, variables, np.rot90(images, 1, axes=(1, 2)), config.data, tta=True
  )
  assert float(jnp.abs(turned_flips - turn(flips, 1)).max()) > 1e-4


@pytest.mark.parametrize('keep_maps', [False, True])
def test_split_is_uploaded_once_and_only_small_results_are_fetched(keep_maps, monkeypatch):
  config, model, variables = _random_model(tta=False)
  source = _fake_source(7)
  step = jax.jit(evaluate.make_eval_step(model, config))
  uploads = []
  split = evaluate.upload_split(
    source, 'fake', 3, lambda b: uploads.append(b) or jax.device_put(b), keep_maps=keep_maps
  )
  assert len(uploads) == 3  # 7 images in batches of 3; nothing more is copied later
  fetched = []
  real_get = jax.device_get
  monkeypatch.setattr(evaluate.jax, 'device_get', lambda x: fetched.append(x) or real_get(x))
  first = evaluate.evaluate_split(step, variables, split)
  second = evaluate.evaluate_split(step, variables, split)
  assert len(uploads) == 3 and len(fetched) == 2  # one fetch per evaluation
  keys = {k for batch in fetched[0] for k in batch}
  assert keys == ({'confusion', 'loss', 'prediction'} if keep_maps else {'confusion', 'loss'})
  np.testing.assert_array_equal(first.confusion, second.confusion)

  # The numbers are those of running the step on each host batch and dropping the padding.
  rows = {'confusion': [], 'loss': [], 'prediction': []}
  for batch in input_pipeline.eval_batches(source, 3):
    out = real_get(step(variables, {k: batch[k] for k in ('image', 'label_map')}))
    for k in rows:
      rows[k].append(np.asarray(out[k])[batch['valid']])
  np.testing.assert_array_equal(first.confusion, np.concatenate(rows['confusion']))
  np.testing.assert_array_equal(first.loss, np.concatenate(rows['loss']))
  assert first.confusion.shape == (7, 4, 4) and first.confusion.sum() == 7 * 32 * 32
  assert list(first.file_ids) == [e['file_id'] for e in source]
  assert list(first.cell_types) == [e['cell_type'] for e in source]
  if keep_maps:
    np.testing.assert_array_equal(first.prediction, np.concatenate(rows['prediction']))
    np.testing.assert_array_equal(first.images, np.stack([e['image'] for e in source]))
    np.testing.assert_array_equal(first.label_maps, np.stack([e['label_map'] for e in source]))
  else:
    assert first.prediction is None and first.images is None and first.label_maps is None


def test_training_log_shows_whole_cell_dice_only_with_a_cytoplasm_class():
  def summary(cell_dice):
    paper = {'accuracy': 0.9, 'dice': 0.8, 'miou': 0.7}
    if cell_dice is not None:
      paper['cell_dice'] = cell_dice
    return {'loss': 0.5, 'paper': paper, 'cells': {'cell_accuracy': 1.0}}

  with_cytoplasm = evaluate.scalar_summary(summary(0.95), 'test/x/')
  without = evaluate.scalar_summary(summary(None), 'test/x/')
  assert with_cytoplasm['test/x/cell_dice'] == 0.95
  assert 'test/x/cell_dice' not in without and without['test/x/dice'] == 0.8


def test_a_source_evaluated_once_goes_to_the_device_in_chunks_with_the_same_result(monkeypatch):
  config, model, variables = _random_model(tta=False)
  source = _fake_source(7)
  step = jax.jit(evaluate.make_eval_step(model, config))
  whole = evaluate.evaluate_split(
    step, variables, evaluate.upload_split(source, 'fake', 2, jax.device_put, keep_maps=True)
  )
  monkeypatch.setattr(evaluate, 'SOURCE_CHUNK_BATCHES', 1)
  uploaded = []  # one upload per batch, each chunk of one batch evaluated before the next
  chunked = evaluate.evaluate_source(
    step,
    variables,
    source,
    'fake',
    2,
    lambda b: uploaded.append(1) or jax.device_put(b),
    keep_maps=True,
  )
  assert len(uploaded) == 4
  for field in (
    'file_ids',
    'cell_types',
    'confusion',
    'loss',
    'prediction',
    'images',
    'label_maps',
  ):
    np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field))


def test_held_out_images_the_model_trained_on_are_reported_apart(tiny_model, tmp_path):
  """Evaluating the training data's own folder as held-out reported training images as unseen;
  those with the ids of the run's training images (its data.json) are now reported apart."""
  record = json.loads((tiny_model['workdir'] / run_files.DATA_FILE).read_text())
  config = tiny_config(
    tiny_model['raw_dir'], tiny_model['tfds_dir'], **{'eval.raw_dir': str(tiny_model['raw_dir'])}
  )
  written = evaluate.evaluate_checkpoint(config, str(tmp_path / 'wd'), str(tiny_model['workdir']))
  name = held_out.report_name(tiny_model['raw_dir'])
  for source in ('jiangxi', 'cellavision'):
    assert written[f'{name}-{source}']['n_images'] == len(record[source]['test'])
    assert written[f'{name}-{source}-training_images']['n_images'] == len(record[source]['train'])


def test_worst_images_put_mistyped_cells_first():
  """A cell typed wrong shows among the worst even when its nucleus is outlined well."""
  dice = np.array([0.9, 0.1, 0.5, 0.1, 0.97, 0.95])
  mistyped = np.array([False, False, False, False, True, True])
  assert reports.worst_indices(dice, 3, mistyped) == [5, 4, 1]
  assert reports.worst_indices(dice, 6, mistyped) == [5, 4, 1, 3, 2, 0]


def test_per_class_mean_skips_classes_without_a_labelled_pixel():
  """The paper's classes on a split without basophils: a few false basophil pixels give it
  Dice 0, which the mean of the labelled classes leaves out."""
  cm = np.zeros((4, 4), np.int64)
  cm[0, 0], cm[1, 1], cm[3, 3] = 900, 90, 80
  cm[1, 2] = 10  # neutrophil pixels predicted basophil
  per_class = metrics.class_metrics(cm, classes.PAPER_TABLE)
  assert per_class['support']['basophil'] == 0 and per_class['dice']['basophil'] == 0.0
  means = metrics.labelled_class_means(per_class)
  labelled = [per_class['dice'][c] for c in ('background', 'neutrophil', 'lymphocyte')]
  assert means['dice'] == pytest.approx(np.mean(labelled))
  table = reports.per_class_table({'per_class': per_class})
  assert '| basophil (none labelled) | 0 |' in table
  assert '| mean (labelled classes) |  | ' in table
  assert reports.format_number(means['dice']) in table.splitlines()[-1]


def test_paper_table_has_no_row_of_only_n_a():
  summary = {
    'paper': {k: 0.95 for k in reports.PAPER_COLUMNS},
    'per_image': {'paper': {k: {'mean': 0.94, 'std': 0.01} for k in reports.PAPER_COLUMNS}},
  }
  table = reports.paper_comparison_table(summary, 'jiangxi', 'ours')
  body = table.splitlines()[2:]
  assert not [row for row in body if set(row.strip('| ').split(' | ')[1:]) == {'n/a'}]
  assert 'WCSegNet (paper)' in table and 'U-Net (ReLU)' not in table
