"""Tests of `python -m wcsegnet_jax.predict`: masks at the original size, cells.csv, bad files.

Uses the tiny model that tests/test_evaluate.py trains once per session.
"""

import csv
import dataclasses
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

import fixtures
import test_evaluate
from wcsegnet_jax import predict
from wcsegnet_jax.cells import cells
from wcsegnet_jax.cells import overlays
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import image_files
from wcsegnet_jax.inference import cells_table
from wcsegnet_jax.inference import input_images
from wcsegnet_jax.inference import model_loading
from wcsegnet_jax.inference import options as options_lib
from wcsegnet_jax.inference import output_folder
from wcsegnet_jax.inference import prediction
from wcsegnet_jax.inference import scale_estimate
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.inference.options import PredictOptions
from wcsegnet_jax.model import restore
from wcsegnet_jax.model import shipped_model


def run(workdir, output, inputs, **options):
  """`prediction.run` as the command calls it, from the values of its flags."""
  return prediction.run(inputs, PredictOptions(output=output, workdir=workdir, **options))


def predict_files(config, variables, paths, output, **options):
  """`prediction.predict_files` into `output`, with the other options as the flags give them."""
  return prediction.predict_files(
    config, variables, paths, PredictOptions(output=output, **options)
  )


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
  return test_evaluate.trained_tiny_model(tmp_path_factory)


@pytest.fixture
def image_folder(tiny_model, tmp_path):
  """Images of three sizes (120x120, 300x300, 50x80) and one corrupt .png."""
  folder = tmp_path / 'images'
  folder.mkdir()
  raw_dir = tiny_model['raw_dir']
  shutil.copy(sorted((raw_dir / 'Dataset 1').glob('*.bmp'))[0], folder / 'small.bmp')
  shutil.copy(sorted((raw_dir / 'Dataset 2').glob('*.bmp'))[0], folder / 'large.bmp')
  rng = np.random.default_rng(0)
  mask = fixtures.cell_mask(rng, 80)[:50]
  fixtures.write_rgb(folder / 'wide.png', fixtures.cell_image(rng, mask))
  (folder / 'broken.png').write_bytes(b'\x89PNG not really' + bytes(range(200)))
  return folder


def read_cells(path: pathlib.Path) -> dict[str, dict]:
  with open(path, newline='') as f:
    return {pathlib.Path(r['file']).name: r for r in csv.DictReader(f)}


def read_cell_rows(path: pathlib.Path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def read_differential(path: pathlib.Path) -> dict[str, int]:
  with open(path, newline='') as f:
    return {r['cell_type']: int(r['count']) for r in csv.DictReader(f)}


def test_predict_command_on_a_folder(tiny_model, image_folder, tmp_path):
  out = tmp_path / 'out' / 'nested'  # created by the command
  proc = test_evaluate.run_command(
    'wcsegnet_jax.predict',
    f'--workdir={tiny_model["workdir"]}',
    f'--output={out}',
    '--pixel_size_um=0.5',
    '--batch_size=2',
    str(image_folder),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'broken.png' in proc.stderr and 'Traceback' not in proc.stderr
  assert '4 images: 3 segmented, 1 skipped' in proc.stdout
  rows = read_cell_rows(out / 'cells.csv')
  for name in ('large.bmp', 'small.bmp', 'wide.png'):
    stem = pathlib.Path(name).stem
    original = image_files.read_rgb(image_folder / name)
    mask = cv2.cvtColor(cv2.imread(str(out / f'{stem}_mask.png')), cv2.COLOR_BGR2RGB)
    overlay = overlays.without_legend(
      overlays.read_rgb(out / f'{stem}_overlay.png'), classes.PAPER_TABLE
    )
    factor = overlay.shape[1] // original.shape[1]  # small crops are drawn larger
    assert mask.shape == original.shape
    assert overlay.shape == (original.shape[0] * factor, original.shape[1] * factor, 3)
    colours = {tuple(c) for c in mask.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in classes.CLASS_COLORS}
    own = [r for r in rows if pathlib.Path(r['file']).name == name]
    if not own:  # an image with no cell has no row, and says so
      assert re.search(rf'no cell found in \d+ images?: .*{name}', proc.stdout)
    assert [int(r['cell']) for r in own] == list(range(1, len(own) + 1))
    nucleus = (mask != 0).any(-1)
    assert sum(int(r['nucleus_area_px']) for r in own) <= nucleus.sum()
    for row in own:
      x0, y0, x1, y1 = (int(row[k]) for k in ('x0', 'y0', 'x1', 'y1'))
      assert 0 <= x0 < x1 <= original.shape[1] and 0 <= y0 < y1 <= original.shape[0]
      assert nucleus[y0:y1, x0:x1].sum() >= int(row['nucleus_area_px'])
      assert row['touches_border'] == str(
        int(x0 == 0 or y0 == 0 or x1 == original.shape[1] or y1 == original.shape[0])
      )
      assert row['predicted_type'] in classes.CLASS_NAMES[1:]
      area = int(row['nucleus_area_px'])
      assert float(row['nucleus_area_um2']) == pytest.approx(area * 0.25, abs=1e-3)
      assert float(row['perimeter_um']) == pytest.approx(float(row['perimeter_px']) * 0.5, abs=0.01)
      assert row['cell_area_px'] == row['nc_ratio'] == ''  # no cytoplasm class
      assert 0.0 <= float(row['confidence']) <= 1.0
      assert row['mask_file'] == f'{stem}_mask.png'
  counted = [r for r in rows if r['counted'] == '1']
  assert all(r['exclusion_reason'] == '' for r in counted)
  assert all(r['exclusion_reason'] for r in rows if r['counted'] == '0')
  differential = read_differential(out / 'differential.csv')
  assert differential['total'] == len(counted)
  assert sum(n for t, n in differential.items() if t != 'total') == len(counted)
  for name in classes.CLASS_NAMES[1:]:
    assert differential[name] == sum(r['predicted_type'] == name for r in counted)
  assert (out / 'contact_sheet.png').is_file()
  assert not (out / 'broken_mask.png').exists()
  assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]


def test_predict_all_unreadable_and_missing_inputs(tiny_model, tmp_path):
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'garbage')
  summary = run(str(tiny_model['workdir']), str(tmp_path / 'out'), [str(bad)])
  assert summary.done == [] and summary.skipped[0][0] == str(bad)  # the command exits 1
  assert 'bad.png' in summary.text()
  assert not list((tmp_path / 'out').iterdir())  # nothing segmented, nothing written
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('mine')
  run(str(tiny_model['workdir']), str(tmp_path / 'mine'), [str(bad)], overwrite=True)
  assert [p.name for p in (tmp_path / 'mine').iterdir()] == ['notes.txt']
  with pytest.raises(errors.DataError, match='no such file'):
    run(str(tiny_model['workdir']), str(tmp_path / 'out'), [str(tmp_path / 'nope')])
  with pytest.raises(errors.DataError, match='no image'):
    (tmp_path / 'empty').mkdir()
    run(str(tiny_model['workdir']), str(tmp_path / 'out'), [str(tmp_path / 'empty')])


def _tiny_variables(tiny_model):
  config = model_loading.load_workdir_config(tiny_model['workdir'])
  variables, _ = restore.load_variables(config, tiny_model['workdir'], 'latest')
  return config, variables


def test_truncated_images_are_skipped_with_the_reason(tiny_model, tmp_path, capfd):
  """A half-written file is skipped and named, never segmented as a half-gray image."""
  rng = np.random.default_rng(3)
  image = fixtures.cell_image(rng, fixtures.cell_mask(rng, 40))
  paths = [tmp_path / name for name in ('whole.jpg', 'half.jpg', 'half.png', 'half.bmp')]
  for path in paths:
    fixtures.write_rgb(path, image)
  for path in paths[1:]:
    fixtures.truncate(path)
  summary = predict_files(*_tiny_variables(tiny_model), paths, tmp_path / 'out')
  assert summary.done == [str(paths[0])]
  reasons = dict(summary.skipped)
  assert sorted(reasons) == sorted(str(p) for p in paths[1:])
  assert 'truncated JPEG' in reasons[str(paths[1])]
  assert 'truncated PNG' in reasons[str(paths[2])]
  err = capfd.readouterr().err
  assert all(f'skipped: {p}' in err for p in paths[1:])
  assert 'Premature end' not in err and 'libpng' not in err


def test_grayscale_images_warn_but_are_segmented(tiny_model, tmp_path, capfd):
  """One line per gray image (one channel, or three equal ones) saying the model wants colour."""
  rng = np.random.default_rng(4)
  colour = fixtures.cell_image(rng, fixtures.cell_mask(rng, 40))
  gray = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
  fixtures.write_gray(tmp_path / 'one_channel.png', gray)
  fixtures.write_rgb(tmp_path / 'three_equal.jpg', np.repeat(gray[..., None], 3, -1))
  fixtures.write_rgb(tmp_path / 'colour.png', colour)
  paths = sorted(tmp_path.glob('*.*'))
  summary = predict_files(*_tiny_variables(tiny_model), paths, tmp_path / 'out')
  assert summary.done == [str(p) for p in paths] and not summary.skipped
  warnings = [line for line in capfd.readouterr().err.splitlines() if 'a grayscale image' in line]
  assert len(warnings) == 2 and 'colour' in warnings[0]
  assert {pathlib.Path(line.split(': ')[1]).name for line in warnings} == {
    'one_channel.png',
    'three_equal.jpg',
  }


def test_predict_workdir_without_checkpoint(tiny_model, tmp_path):
  workdir = tmp_path / 'crashed_run'
  workdir.mkdir()
  shutil.copy(tiny_model['workdir'] / 'config.json', workdir / 'config.json')
  image = next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))
  with pytest.raises(errors.CheckpointError, match=re.escape(str(workdir))):
    run(str(workdir), str(tmp_path / 'out'), [str(image)])
  with pytest.raises(errors.CheckpointError, match='config.json'):
    run(str(tmp_path / 'nothing_here'), str(tmp_path / 'out'), [str(image)])


def test_predict_warns_where_a_runs_cell_typer_was_never_fitted(tiny_model, tmp_path, caplog):
  """A run with typer.fit that stopped before its fit (e.g. a bad row of its lab's fields)
  is not taken silently as one typing cells with its typer."""
  workdir = tmp_path / 'unfitted'
  shutil.copytree(tiny_model['workdir'], workdir)
  for name in ('cell_typer.npz', 'cell_typer.json'):
    (workdir / name).unlink(missing_ok=True)
  saved = json.loads((workdir / 'config.json').read_text())
  image = next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))
  for fit, warned in ((False, False), (True, True)):
    saved['typer']['fit'] = fit
    (workdir / 'config.json').write_text(json.dumps(saved))
    caplog.clear()
    with caplog.at_level('WARNING'):
      run(str(workdir), str(tmp_path / f'out_{fit}'), [str(image)])
    messages = [r.getMessage() for r in caplog.records if 'it has none' in r.getMessage()]
    assert bool(messages) == warned
  assert str(workdir) in messages[0] and 'training command, run again' in messages[0]


def test_predict_tta_is_flip_equivariant(tiny_model, tmp_path):
  """With TTA over the four flips, segmenting a mirrored image gives the mirrored mask."""
  rng = np.random.default_rng(1)
  image = fixtures.cell_image(rng, fixtures.cell_mask(rng, 32))  # the model's size: no resize
  fixtures.write_rgb(tmp_path / 'cell.png', image)
  fixtures.write_rgb(tmp_path / 'mirrored.png', image[:, ::-1])
  config, variables = _tiny_variables(tiny_model)
  summary = predict_files(
    config,
    variables,
    [tmp_path / 'cell.png', tmp_path / 'mirrored.png'],
    tmp_path / 'out',
    tta=True,
  )
  assert len(summary.done) == 2
  mask = cv2.imread(str(tmp_path / 'out' / 'cell_mask.png'))
  mirrored = cv2.imread(str(tmp_path / 'out' / 'mirrored_mask.png'))
  assert (mask[:, ::-1] == mirrored).all(-1).mean() > 0.99


def test_same_stem_gets_a_unique_name(tiny_model, tmp_path):
  config, variables = _tiny_variables(tiny_model)
  rng = np.random.default_rng(2)
  image = fixtures.cell_image(rng, fixtures.cell_mask(rng, 40))
  for sub in ('a', 'b'):
    (tmp_path / sub).mkdir()
    fixtures.write_rgb(tmp_path / sub / 'cell.png', image)
  predict_files(
    config, variables, [tmp_path / 'a' / 'cell.png', tmp_path / 'b' / 'cell.png'], tmp_path / 'out'
  )
  rows = read_cell_rows(tmp_path / 'out' / 'cells.csv')
  assert {r['mask_file'] for r in rows} <= {'cell_mask.png', 'cell_2_mask.png'}
  assert [r['file'] for r in rows] == sorted(r['file'] for r in rows)  # in input order
  assert (tmp_path / 'out' / 'cell_2_mask.png').is_file()
  assert (tmp_path / 'out' / 'cell_2_overlay.png').is_file()


def test_checkpoint_path_without_workdir_is_that_checkpoint(tiny_model, tmp_path, monkeypatch):
  """--checkpoint=PATH alone predicts with PATH, never silently with the shipped model."""

  def no_shipped_model(*args, **kwargs):
    raise AssertionError('the shipped model was loaded')

  monkeypatch.setattr(shipped_model, 'load_config', no_shipped_model)
  image = next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))
  summary = run(None, str(tmp_path / 'out'), [str(image)], checkpoint=str(tiny_model['workdir']))
  assert summary.done == [str(image)]
  with pytest.raises(errors.CheckpointError, match='pass --workdir'):
    run(None, str(tmp_path / 'out2'), [str(image)], checkpoint='latest')


def test_tta_defaults_to_the_models_config(tiny_model, tmp_path, monkeypatch):
  """Without --tta/--notta, predict averages over flips exactly when the model's eval did."""
  seen = []

  def record(config, variables, paths, options, *args, **kwargs):
    seen.append((bool(config.eval.tta), options.tta))
    return prediction.PredictionSummary([], [])

  monkeypatch.setattr(prediction, 'predict_files', record)
  image = next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))
  run(str(tiny_model['workdir']), str(tmp_path / 'out'), [str(image)])
  run(str(tiny_model['workdir']), str(tmp_path / 'out'), [str(image)], tta=True)
  run(None, str(tmp_path / 'out'), [str(image)])  # the shipped model
  assert seen[0] == (False, False) and seen[1] == (False, True)
  assert seen[2][1] == seen[2][0]


def test_output_with_files_is_refused_before_the_model_loads(tmp_path, monkeypatch):
  """Results of two runs never mix: a non-empty --output is refused at once, naming it."""
  image = tmp_path / 'cell.png'
  rng = np.random.default_rng(5)
  fixtures.write_rgb(image, fixtures.cell_image(rng, fixtures.cell_mask(rng, 60)))
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'notes.txt').write_text('mine')
  monkeypatch.setattr(
    shipped_model,
    'load_variables',
    lambda *a: pytest.fail('the model loaded before --output was checked'),
  )
  with pytest.raises(
    errors.DataError, match=re.escape(str(out)) + '.*already holds 1 files.*--overwrite'
  ):
    run(None, str(out), [str(image)])
  with pytest.raises(errors.DataError, match='is a file, not a folder'):
    run(None, str(out / 'notes.txt'), [str(image)])
  assert (out / 'notes.txt').read_text() == 'mine'


def test_overwrite_removes_only_what_an_earlier_predict_wrote(tiny_model, tmp_path):
  raw_dir, workdir = tiny_model['raw_dir'], str(tiny_model['workdir'])
  first, second = sorted((raw_dir / 'Dataset 1').glob('*.bmp'))[:2]
  out = tmp_path / 'out'
  run(workdir, str(out), [str(first)])
  (out / 'notes.txt').write_text('mine')
  written = sorted(p.name for p in out.iterdir())
  assert f'{first.stem}_mask.png' in written and output_folder.OUTPUTS_FILE in written
  with pytest.raises(errors.DataError, match='already holds'):
    run(workdir, str(out), [str(second)])
  run(workdir, str(out), [str(second)], overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == sorted(
    [
      'cells.csv',
      'differential.csv',
      'notes.txt',
      output_folder.OUTPUTS_FILE,
      output_folder.CONTACT_SHEET_FILE,
      f'{second.stem}_mask.png',
      f'{second.stem}_overlay.png',
    ]
  )
  assert {pathlib.Path(r['file']).name for r in read_cell_rows(out / 'cells.csv')} <= {second.name}
  listing = json.loads((out / output_folder.OUTPUTS_FILE).read_text())
  assert listing['complete'] and 'step' in listing['model']
  assert listing['files'] == [f'{second.stem}_mask.png', f'{second.stem}_overlay.png']


def test_workdir_without_checkpoint_uses_its_eval_checkpoint(tiny_model, tmp_path, monkeypatch):
  """predict, like evaluation, takes the config's eval.checkpoint (latest), not 'best'."""
  asked = []
  real = restore.load_variables
  monkeypatch.setattr(
    restore,
    'load_variables',
    lambda config, workdir, which, **kw: asked.append(which) or real(config, workdir, which, **kw),
  )
  image = next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))
  run(str(tiny_model['workdir']), str(tmp_path / 'a'), [str(image)])
  run(str(tiny_model['workdir']), str(tmp_path / 'b'), [str(image)], checkpoint='best')
  assert asked == ['latest', 'best']
  with pytest.raises(errors.CheckpointError, match='pass --workdir'):
    run(None, str(tmp_path / 'c'), [str(image)], checkpoint='best')


def test_overwrite_never_replaces_a_file_no_predict_wrote(tiny_model, tmp_path):
  """A user's own 002_mask.png (a ground truth, say) or cells.csv beside the images is kept."""
  image = sorted((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))[0]
  out = tmp_path / 'out'
  out.mkdir()
  mine = out / f'{image.stem}_mask.png'
  shutil.copy(image.with_suffix('.png'), mine)
  before = mine.read_bytes()
  with pytest.raises(errors.DataError, match=re.escape(mine.name) + '.*no earlier predict wrote'):
    run(str(tiny_model['workdir']), str(out), [str(image)], overwrite=True)
  assert mine.read_bytes() == before


def _predicted_into_itself(tiny_model, tmp_path, n_images: int) -> tuple[pathlib.Path, str]:
  """(folder, workdir): a folder of `n_images` crops, predicted once into that same folder."""
  folder = tmp_path / 'cells'
  folder.mkdir()
  for image in sorted((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))[:n_images]:
    shutil.copy(image, folder / image.name)
  workdir = str(tiny_model['workdir'])
  run(workdir, str(folder), [str(folder)], overwrite=True)
  return folder, workdir


def test_predicting_into_the_input_folder_again_skips_the_earlier_outputs(tiny_model, tmp_path):
  folder, workdir = _predicted_into_itself(tiny_model, tmp_path, 2)
  again = run(workdir, str(folder), [str(folder)], overwrite=True)
  assert len(again.done) == 2 and not again.skipped  # its masks and overlays are not inputs
  assert again.text().splitlines()[0] == '2 images: 2 segmented, 0 skipped'


def test_a_folder_of_subfolders_says_they_are_not_searched(tmp_path):
  (tmp_path / 'patientA').mkdir()
  with pytest.raises(
    errors.DataError,
    match='subfolders are not searched: name them, e.g. ' + re.escape(str(tmp_path / 'patientA')),
  ):
    input_images.list_images([str(tmp_path)])


def test_a_refused_overwrite_leaves_the_earlier_results(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  for name in ('a_mask.png', 'a_overlay.png', 'cells.csv', 'b_mask.png'):
    (out / name).write_text(name)
  (out / output_folder.OUTPUTS_FILE).write_text(
    json.dumps({'files': ['a_mask.png', 'a_overlay.png']})
  )
  with pytest.raises(errors.DataError, match='b_mask.png'):
    output_folder.prepare_output(out, True, ['b_mask.png', 'b_overlay.png', 'cells.csv'])
  assert sorted(p.name for p in out.iterdir()) == sorted(
    ['a_mask.png', 'a_overlay.png', 'cells.csv', 'b_mask.png', output_folder.OUTPUTS_FILE]
  )


def _field(tmp_path, rng, crops=4, size=64):
  """A field: `crops` generated cell crops of `size` pixels in a 2-column mosaic."""
  from wcsegnet_jax.dev import mosaics  # pylint: disable=g-import-not-at-top

  parts = [
    mosaics.Crop(str(k), fixtures.cell_image(rng, mask), mask == 255, 'neutrophil')
    for k, mask in enumerate(fixtures.cell_mask(rng, size) for _ in range(crops))
  ]
  image, _ = mosaics.build_mosaic(parts, columns=2, gap=size // 6)
  path = tmp_path / 'field.png'
  fixtures.write_rgb(path, image)
  return path, image


def test_field_scale_segments_in_tiles_at_that_scale(tiny_model, tmp_path, monkeypatch):
  """--field_scale: the field is resized by F and tiled at the training size, never
  squashed whole; the mask is at the field's size and the cells' boxes lie inside it."""
  config, variables = _tiny_variables(tiny_model)
  path, image = _field(tmp_path, np.random.default_rng(7))
  seen = []
  real = segmenter.fields.segment_field
  monkeypatch.setattr(
    segmenter.fields,
    'segment_field',
    lambda fn, field, tile, **kw: (
      seen.append((field.shape, tile, kw['batch_size'])) or real(fn, field, tile, **kw)
    ),
  )
  summary = predict_files(
    config, variables, [path], tmp_path / 'out', batch_size=4, field_scale=0.5
  )
  height, width = image.shape[:2]
  size = int(config.data.image_size)
  assert seen == [((round(height * 0.5), round(width * 0.5), 3), size, 4)]
  assert summary.done == [str(path)]
  mask = cv2.imread(str(tmp_path / 'out' / 'field_mask.png'))
  assert mask.shape == image.shape
  rows = read_cell_rows(tmp_path / 'out' / 'cells.csv')
  for row in rows:
    assert 0 <= int(row['x0']) < int(row['x1']) <= width
    assert 0 <= int(row['y0']) < int(row['y1']) <= height
  counted = [r for r in rows if r['counted'] == '1']  # not those cut by the field's border
  assert all(r['exclusion_reason'] for r in rows if r['touches_border'] == '1')
  assert read_differential(tmp_path / 'out' / 'differential.csv')['total'] == len(counted)
  assert summary.differential[-1]['count'] == len(counted)
  # The command line takes the flag, and refuses a scale that is no scale.
  proc = test_evaluate.run_command(
    'wcsegnet_jax.predict',
    f'--workdir={tiny_model["workdir"]}',
    f'--output={tmp_path / "cmd"}',
    '--field_scale=1.0',
    str(path),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / 'cmd' / 'differential.csv').is_file() and 'differential.csv' in proc.stdout
  for bad in (0.0, -1.0, float('nan')):
    with pytest.raises(errors.UsageError, match='--field_scale'):
      run(str(tiny_model['workdir']), str(tmp_path / 'bad'), [str(path)], field_scale=bad)


def test_an_image_with_no_cell_gives_no_row_and_says_so(tiny_model, tmp_path, capfd):
  config, variables = _tiny_variables(tiny_model)
  path = tmp_path / 'plain.png'
  fixtures.write_rgb(path, np.full((64, 64, 3), (230, 190, 200), np.uint8))
  # No predicted nucleus can be a cell this large: the image is done, with no cell.
  never = cells.CellRules(min_nucleus_px=1e9)
  summary = predict_files(config, variables, [path], tmp_path / 'out', cell_rules=never)
  assert summary.done == [str(path)] and summary.no_cells == [str(path)]
  assert f'{path}: no cell found' in capfd.readouterr().err
  assert f'no cell found in 1 image: {path}' in summary.text()
  assert '0 cells' in summary.text()
  assert read_cell_rows(tmp_path / 'out' / 'cells.csv') == []
  differential = read_differential(tmp_path / 'out' / 'differential.csv')
  assert set(differential.values()) == {0}
  assert list(differential) == [*classes.CLASS_NAMES[1:], 'total']
  assert (tmp_path / 'out' / 'plain_mask.png').is_file()


def test_images_whose_outputs_would_not_fit_in_memory_are_refused_by_name():
  big = np.broadcast_to(np.zeros(3, np.uint8), (6000, 9000, 3))  # 54 MP, no memory used
  with pytest.raises(errors.DataError, match=r'big\.png: 9000x6000 pixels is 54 megapixels'):
    input_images.check_image_size(pathlib.Path('big.png'), big, None)
  # 45 megapixels:
  assert input_images.check_image_size(pathlib.Path('big.png'), big[:5000], 0.5) is not None
  with pytest.raises(errors.DataError, match='at --field_scale=2.0.*smaller --field_scale'):
    input_images.check_image_size(pathlib.Path('f.png'), big[:4000, :4000], 2.0)  # 64 MP


def test_a_field_scale_below_one_does_not_get_past_the_memory_cap():
  """The probabilities of a field are resized back to the image's own size: a 10000x10000 image
  held 7.2 GB at --field_scale=0.1, which the cap let through (it checked the scaled size)."""
  huge = np.broadcast_to(np.zeros(3, np.uint8), (10000, 10000, 3))
  for scale in (None, 0.1, 0.4):
    with pytest.raises(
      errors.DataError,
      match=r'huge\.png: 10000x10000 pixels is 100 megapixels .*own size, '
      r'whatever --field_scale\); cut the image into parts$',
    ):
      input_images.check_image_size(pathlib.Path('huge.png'), huge, scale)


def test_summary_says_which_types_the_model_cannot_tell():
  """The paper's model has no monocyte or eosinophil class: the summary says where they go."""
  paper = prediction.PredictionSummary(['a.png'], [], cell_types=classes.PAPER_TABLE.cell_types)
  assert paper.text().splitlines()[-1] == (
    'the model types neutrophil, basophil, lymphocyte only: a cell of another type '
    '(monocyte, eosinophil) is counted as the nearest of these'
  )
  five = prediction.PredictionSummary(['a.png'], [], cell_types=classes.ALL_CELL_TYPES)
  assert five.text() == '1 image: 1 segmented, 0 skipped'


def test_predict_command_without_images_is_one_line(tmp_path):
  proc = test_evaluate.run_command('wcsegnet_jax.predict', f'--output={tmp_path / "out"}')
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == ['error: give at least one image file or folder (see --help)']
  assert not (tmp_path / 'out').exists()


def test_help_lists_every_image_suffix_read():
  listed = predict.__doc__.split('whose images (')[1].split(';')[0]
  assert [s.strip() for s in listed.replace('\n', ' ').split(',')][:-1] == list(
    image_files.IMAGE_SUFFIXES
  )


def test_a_wbc_layout_folder_is_refused_with_its_masks_named(tmp_path):
  """NNN.png beside NNN.bmp are the WBC layout's masks, not images to segment."""
  for name in ('001.bmp', '001.png', '002.jpg', '002.png'):
    (tmp_path / name).write_bytes(b'')
  with pytest.raises(
    errors.DataError,
    match=r'holds 2 \.png file\(s\) named like an image beside '
    r'them \(e\.g\. 001\.png\): the WBC layout',
  ):
    input_images.list_images([str(tmp_path)])
  assert input_images.list_images([str(tmp_path / '001.bmp'), str(tmp_path / '001.png')]) == [
    tmp_path / '001.bmp',
    tmp_path / '001.png',
  ]  # files named one by one are taken


def test_field_scale_takes_auto_or_a_positive_number():
  assert options_lib.parse_field_scale(None) is None
  assert options_lib.parse_field_scale('AUTO') == options_lib.AUTO_SCALE
  assert options_lib.parse_field_scale('0.25') == 0.25
  for bad in ('0', '-1', 'nan', 'big'):
    with pytest.raises(errors.UsageError, match=r'--field_scale=.* positive number .* or auto'):
      options_lib.parse_field_scale(bad)


def test_model_names_a_shipped_model_or_a_model_folder(tmp_path):
  config, variables, source, _ = model_loading.load_model(None, model='paper')
  assert classes.table_of(config.data).cell_types == classes.DEFAULT_CELL_TYPES
  assert 'paper' in source and set(variables) == {'params', 'batch_stats'}
  folder = shipped_model.model_dir('paper')
  assert model_loading.load_model(None, model=str(folder))[2].endswith(str(folder))
  with pytest.raises(shipped_model.PretrainedModelError, match='--model=nope: neither'):
    model_loading.load_model(None, model='nope')
  with pytest.raises(errors.CheckpointError, match='not both'):
    model_loading.load_model(str(tmp_path), model='paper')


def test_auto_field_scale_is_estimated_per_image_and_written(
  tiny_model, tmp_path, monkeypatch, capfd
):
  """--field_scale=auto: each field's own estimate segments it and lands in cells.csv; no
  estimate falls back to 1.0 with the file named."""
  config, variables = _tiny_variables(tiny_model)
  path, _ = _field(tmp_path, np.random.default_rng(8))
  blank = tmp_path / 'blank.png'
  fixtures.write_rgb(blank, np.full((64, 64, 3), 230, np.uint8))
  estimates = {path.name: 0.5, blank.name: None}
  monkeypatch.setattr(
    scale_estimate,
    'estimate_scale',
    lambda segment, image, decode: estimates[path.name if image.shape[0] > 64 else blank.name],
  )
  seen = []
  real = segmenter.Segmenter.field
  monkeypatch.setattr(
    segmenter.Segmenter,
    'field',
    lambda self, image, scale, **kw: seen.append(scale) or real(self, image, scale, **kw),
  )
  predict_files(config, variables, [path, blank], tmp_path / 'out', field_scale='auto')
  assert seen == [0.5, 1.0]
  assert f'warning: {blank}: no nucleus found at any scale' in capfd.readouterr().err
  rows = read_cell_rows(tmp_path / 'out' / 'cells.csv')
  assert {r['field_scale'] for r in rows if r['file'] == str(path)} <= {'0.5000'}


def test_a_photo_with_exif_orientation_gets_masks_and_boxes_as_viewers_show_it(
  tiny_model, tmp_path
):
  """Stored 120 wide and 100 high with orientation 6 (turn clockwise): every viewer shows it
  100x120, and so are its mask, overlay and boxes."""
  rng = np.random.default_rng(5)
  shown = fixtures.cell_image(rng, fixtures.cell_mask(rng, 120))[:, 10:110]  # 100 wide
  fixtures.write_with_orientation(tmp_path / 'portrait.jpg', np.rot90(shown, 1), 6)
  config, variables = _tiny_variables(tiny_model)
  predict_files(config, variables, [tmp_path / 'portrait.jpg'], tmp_path / 'out')
  assert cv2.imread(str(tmp_path / 'out' / 'portrait_mask.png')).shape == (120, 100, 3)
  # drawn larger, legend below:
  overlay = cv2.imread(str(tmp_path / 'out' / 'portrait_overlay.png'))
  assert overlay.shape[1] < overlay.shape[0]
  for row in read_cell_rows(tmp_path / 'out' / 'cells.csv'):
    assert int(row['x1']) <= 100 and int(row['y1']) <= 120


def test_a_file_name_not_in_utf8_keeps_the_whole_runs_tables(tiny_model, tmp_path):
  """caf\\xe9.png (Latin-1, as Windows archives unpack) crashed the run after its masks were
  written, losing cells.csv for every image; it is named with \\xNN and its outputs get '_'."""
  folder = tmp_path / 'images'
  folder.mkdir()
  image = next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp'))
  shutil.copy(image, folder / 'plain.bmp')
  shutil.copy(image, bytes(folder) + b'/caf\xe9.bmp')
  summary = run(str(tiny_model['workdir']), str(tmp_path / 'out'), [str(folder)])
  assert sorted(pathlib.Path(p).name for p in summary.done) == ['caf\\xe9.bmp', 'plain.bmp']
  summary.text().encode('utf-8')  # printable
  text = (tmp_path / 'out' / 'cells.csv').read_bytes().decode('utf-8')
  rows = read_cell_rows(tmp_path / 'out' / 'cells.csv')
  assert text and {pathlib.Path(r['file']).name for r in rows} <= {'caf\\xe9.bmp', 'plain.bmp'}
  assert (tmp_path / 'out' / 'caf__mask.png').is_file()
  assert (tmp_path / 'out' / 'differential.csv').is_file()
  listing = json.loads((tmp_path / 'out' / output_folder.OUTPUTS_FILE).read_text())
  assert listing['complete'] and 'caf__overlay.png' in listing['files']


def test_an_earlier_predicts_outputs_in_an_input_folder_are_left_out_saying_so(
  tiny_model, tmp_path, capfd
):
  """3 images once predicted into their own folder are 3 images later, not 9 (each mask and
  overlay counted as cells): that folder's predict_outputs.json lists them."""
  folder, workdir = _predicted_into_itself(tiny_model, tmp_path, 3)
  capfd.readouterr()
  later = run(workdir, str(tmp_path / 'elsewhere'), [str(folder)])
  assert sorted(pathlib.Path(p).name for p in later.done) == sorted(
    p.name for p in folder.glob('*.bmp')
  )
  assert (
    f'{folder}: left out 7 images an earlier predict wrote there (masks, overlays and its '
    f'contact sheet, listed in its predict_outputs.json)'
  ) in capfd.readouterr().err


def test_a_huge_pixel_size_is_one_line_before_the_model_loads(tmp_path):
  """--pixel_size_um=1e200 overflowed (an OverflowError traceback) once areas were computed."""
  with pytest.raises(errors.UsageError, match=r'--pixel_size_um=1e\+200 must be .* at most 1000'):
    run(None, str(tmp_path / 'out'), [str(tmp_path)], pixel_size_um=1e200)


def test_links_and_fifos_in_an_input_folder_are_listed_not_dropped_silently(tmp_path, capsys):
  rng = np.random.default_rng(0)
  fixtures.write_rgb(tmp_path / 'cell.png', fixtures.cell_image(rng, fixtures.cell_mask(rng, 40)))
  (tmp_path / 'gone.png').symlink_to(tmp_path / 'nowhere.png')
  (tmp_path / 'loop.png').symlink_to(tmp_path / 'loop.png')
  os.mkfifo(tmp_path / 'pipe.png')
  assert input_images.list_images([str(tmp_path)]) == [tmp_path / 'cell.png']
  assert (
    f'{tmp_path}: left out 3 entries that are not files: gone.png (a broken symbolic '
    f'link), loop.png (a symbolic link in a loop), pipe.png (a FIFO)'
  ) in (capsys.readouterr().err)


def test_a_file_name_near_the_length_limit_gets_outputs_that_fit(tiny_model, tmp_path):
  """A 240-character name crashed the run ('File name too long') at its overlay's name."""
  long_name = 'x' * 236 + '.bmp'
  shutil.copy(next((tiny_model['raw_dir'] / 'Dataset 1').glob('*.bmp')), tmp_path / long_name)
  assert all(len(n.encode()) <= 255 for n in output_folder.output_names([tmp_path / long_name] * 3))
  config, variables = _tiny_variables(tiny_model)
  summary = predict_files(config, variables, [tmp_path / long_name], tmp_path / 'out')
  assert summary.done == [str(tmp_path / long_name)]
  names = {r['mask_file'] for r in read_cell_rows(tmp_path / 'out' / 'cells.csv')}
  assert all((tmp_path / 'out' / n).is_file() for n in names)


def test_a_large_field_read_as_one_crop_with_no_cell_gets_a_hint(tiny_model, tmp_path, capfd):
  fixtures.write_rgb(tmp_path / 'field.png', np.full((1200, 1200, 3), 230, np.uint8))
  config, variables = _tiny_variables(tiny_model)
  summary = predict_files(config, variables, [tmp_path / 'field.png'], tmp_path / 'out')
  assert summary.no_cells == [str(tmp_path / 'field.png')]
  assert (
    f'{tmp_path / "field.png"}: no cell found (at 1200x1200 it may be a field of many '
    f'cells, squashed here into one crop: try --field_scale=1.0'
  ) in capfd.readouterr().err


def test_an_output_path_through_a_file_or_on_a_read_only_disk_is_one_line(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(errors.DataError, match=f'runs through {tmp_path / "a_file"}, a file'):
    output_folder.prepare_output(tmp_path / 'a_file' / 'out', False)
  if os.geteuid() != 0:
    pytest.skip('a read-only disk is a read-only tmpfs, which only root may mount')
  disk = tmp_path / 'read_only'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(disk)]).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    with pytest.raises(errors.WriteError, match='cannot be written .*Read-only'):
      output_folder.prepare_output(disk / 'out', False)
  finally:
    subprocess.run(['umount', '-l', str(disk)], check=False)


def test_a_full_disk_under_output_is_one_line(tiny_model, small_disk):
  images = small_disk.parent / 'images'
  images.mkdir()
  for k in range(12):
    shutil.copy(sorted((tiny_model['raw_dir'] / 'Dataset 2').glob('*.bmp'))[0], images / f'{k}.bmp')
  with pytest.raises(
    errors.WriteError,
    match=r'writing to --output=.* failed \(No '
    r'space left on device\); what was written is listed in its '
    r'predict_outputs.json',
  ):
    run(str(tiny_model['workdir']), str(small_disk / 'out'), [str(images)])


def test_thin_strips_are_refused_as_cell_crops_naming_them():
  """A 1-pixel-high strip was stretched 120 times and counted as a cell."""
  strip = np.zeros((1, 120, 3), np.uint8)
  with pytest.raises(
    errors.DataError,
    match=r'strip\.png: 120x1 pixels is no cell crop: .*'
    r'stretched 120 times',
  ):
    input_images.check_image_size(pathlib.Path('strip.png'), strip, None)
  assert input_images.check_image_size(pathlib.Path('strip.png'), strip, 1.0) is strip


def test_an_images_alpha_channel_is_dropped_with_a_word(tmp_path, capsys):
  rgba = np.full((40, 40, 4), 200, np.uint8)
  cv2.imwrite(str(tmp_path / 'clear.png'), rgba)
  assert input_images.read_input(tmp_path / 'clear.png').shape == (40, 40, 3)
  assert 'clear.png: its alpha (transparency) channel is ignored' in capsys.readouterr().err


def _one_hot(label_map: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[label_map]


def test_border_cut_and_implausible_cells_are_listed_but_not_counted(tmp_path):
  """A 120x120 crop holding a whole lymphocyte nucleus, a neutrophil one cut by the border
  and a small basophil-typed fragment: the fragment is a speck by default; with specks kept, all
  three are in cells.csv, the whole one alone counted; --count_all_cells
  (CellRules.count_excluded) counts the three."""
  table = classes.class_table(classes.DEFAULT_CELL_TYPES, cytoplasm=False)
  label_map = np.zeros((120, 120), np.uint8)
  cv2.circle(label_map, (50, 60), 18, 3, thickness=-1)  # lymphocyte
  cv2.circle(label_map, (115, 20), 15, 1, thickness=-1)  # neutrophil, cut by the border
  cv2.circle(label_map, (95, 100), 8, 2, thickness=-1)  # a 197-pixel fragment
  image = np.full((120, 120, 3), 200, np.uint8)
  probs = _one_hot(label_map, table.num_classes)
  rows, _ = prediction.write_image_outputs(
    tmp_path, 'crop', tmp_path / 'crop.png', image, probs, None, table, cells.CellRules(), 'argmax'
  )
  assert {r['predicted_type'] for r in rows} == {'neutrophil', 'lymphocyte'}  # a speck (< 280)
  # Specks kept (a smaller min_nucleus_px): the counting rule says why the fragment is not counted.
  kept = cells.CellRules(min_nucleus_px=150)
  rows, counted_ids = prediction.write_image_outputs(
    tmp_path, 'crop', tmp_path / 'crop.png', image, probs, None, table, kept, 'argmax'
  )
  by_type = {r['predicted_type']: r for r in rows}
  assert set(by_type) == {'neutrophil', 'basophil', 'lymphocyte'}
  assert (by_type['lymphocyte']['counted'], by_type['lymphocyte']['exclusion_reason']) == (1, '')
  assert (by_type['neutrophil']['counted'], by_type['neutrophil']['exclusion_reason']) == (
    0,
    'cut by the image border',
  )
  assert by_type['basophil']['counted'] == 0
  assert by_type['basophil']['exclusion_reason'].startswith('nucleus 197 px < 200')
  assert counted_ids == [3]
  every = dataclasses.replace(kept, count_excluded=True)
  rows, counted_ids = prediction.write_image_outputs(
    tmp_path, 'crop', tmp_path / 'crop.png', image, probs, None, table, every, 'argmax'
  )
  assert sorted(counted_ids) == [1, 2, 3]
  assert [r['exclusion_reason'] != '' for r in rows].count(True) == 2  # still said why


def test_summary_says_how_many_objects_were_not_counted():
  summary = prediction.PredictionSummary(
    ['a.png'], [], cell_types=classes.ALL_CELL_TYPES, not_counted=2
  )
  assert summary.text().splitlines()[-1] == (
    '2 more objects not counted (cut by the image border, or too small or misshapen for a '
    'cell): in cells.csv with counted=0 and the reason; --count_all_cells counts them'
  )


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _crop_files(folder: pathlib.Path, n: int, seed: int = 21) -> list[pathlib.Path]:
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  paths = [folder / f'cell_{k}.png' for k in range(n)]
  for path in paths:
    fixtures.write_rgb(path, fixtures.cell_image(rng, fixtures.cell_mask(rng, 40)))
  return paths


def test_progress_of_listed_files_and_of_a_fields_tiles_shows_on_a_terminal_only(
  tiny_model, tmp_path, monkeypatch
):
  """Files given one by one (a shell's glob) get the bar a folder gets, one large field a bar
  of its tiles; a log file or pipe gets no bar fragments at all."""
  paths = [str(p) for p in _crop_files(tmp_path / 'crops', 3)]
  field, _ = _field(tmp_path, np.random.default_rng(8))
  workdir = str(tiny_model['workdir'])
  for stream, shows in ((_Terminal(), True), (io.StringIO(), False)):
    monkeypatch.setattr(sys, 'stderr', stream)
    out = tmp_path / f'out_{shows}'
    run(workdir, str(out / 'crops'), paths, batch_size=2)
    run(workdir, str(out / 'field'), [str(field)], batch_size=2, field_scale=1.0)
    text = stream.getvalue()
    assert ('3/3' in text and 'image' in text and 'tile' in text) == shows, text[-2000:]
    assert ('\r' in text or '%|' in text) == shows, text[-2000:]


def test_ctrl_c_keeps_the_tables_of_the_images_done_and_resume_finishes_without_redoing_them(
  tiny_model, tmp_path, monkeypatch
):
  paths = [str(p) for p in _crop_files(tmp_path / 'crops', 5)]
  workdir, out = str(tiny_model['workdir']), tmp_path / 'out'
  run(workdir, str(tmp_path / 'whole'), paths, batch_size=2)
  whole = read_cell_rows(tmp_path / 'whole' / 'cells.csv')
  real_crops, calls = segmenter.Segmenter.crops, []

  def ctrl_c_at_the_third_batch(self, images):
    calls.append(len(images))
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real_crops(self, images)

  monkeypatch.setattr(segmenter.Segmenter, 'crops', ctrl_c_at_the_third_batch)
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  with pytest.raises(SystemExit) as stop:
    with errors.user_errors_as_messages():
      run(workdir, str(out), paths, batch_size=2)
  assert stop.value.code == errors.INTERRUPTED_STATUS
  text = terminal.getvalue()
  last = text.rsplit('\n', 2)[-2]  # the message is a line of its own, after the bar's
  assert last == (
    f'interrupted: 4 of 5 images done, their cells in {out / "cells.csv"}; to '
    f'continue without redoing them, run the same command with --resume'
  ), text
  done = {pathlib.Path(p).name for p in paths[:4]}
  rows = read_cell_rows(out / 'cells.csv')
  assert rows == [r for r in whole if pathlib.Path(r['file']).name in done]
  counted = sum(r['counted'] == '1' for r in rows)
  assert read_differential(out / 'differential.csv')['total'] == counted
  # A plain rerun is refused, as ever; --resume does the last image only.
  monkeypatch.setattr(
    segmenter.Segmenter,
    'crops',
    lambda self, images: calls.append(len(images)) or real_crops(self, images),
  )
  with pytest.raises(errors.DataError, match='--resume'):
    run(workdir, str(out), paths, batch_size=2)
  calls.clear()
  summary = run(workdir, str(out), paths, batch_size=2, resume=True)
  assert calls == [1] and summary.kept == 4 and len(summary.done) == 5
  assert '(4 of them by the run resumed, kept)' in summary.text()
  assert read_cell_rows(out / 'cells.csv') == whole
  assert read_differential(out / 'differential.csv') == read_differential(
    tmp_path / 'whole' / 'differential.csv'
  )
  listing = json.loads((out / output_folder.OUTPUTS_FILE).read_text())
  assert listing['complete'] and len(listing['done']) == 5
  assert (out / output_folder.CONTACT_SHEET_FILE).is_file()


def test_resume_never_mixes_two_models_or_settings_in_one_table(tiny_model, tmp_path):
  paths = [str(p) for p in _crop_files(tmp_path / 'crops', 2)]
  workdir, out = str(tiny_model['workdir']), tmp_path / 'out'
  run(workdir, str(out), paths[:1])
  before = (out / 'cells.csv').read_bytes()
  with pytest.raises(errors.DataError, match=r'pixel_size_um=None, this one pixel_size_um=0\.5'):
    run(workdir, str(out), paths, resume=True, pixel_size_um=0.5)
  listing = json.loads((out / output_folder.OUTPUTS_FILE).read_text())
  listing['model'] = 'the pretrained model in /elsewhere'
  (out / output_folder.OUTPUTS_FILE).write_text(json.dumps(listing))
  with pytest.raises(
    errors.DataError, match="model='the pretrained model in /elsewhere', this one model='step"
  ):
    run(workdir, str(out), paths, resume=True)
  assert (out / 'cells.csv').read_bytes() == before
  with pytest.raises(errors.UsageError, match='--resume .* --overwrite'):
    run(workdir, str(out), paths, resume=True, overwrite=True)
  # On a new folder, --resume is a plain run.
  assert len(run(workdir, str(tmp_path / 'new'), paths, resume=True).done) == 2


def test_a_killed_runs_cut_last_row_and_unfinished_images_are_left_out_when_resumed(tmp_path):
  """A run killed outright (no Ctrl-C handling) leaves cells.csv as appended: the rows of
  images not recorded as done, and a row cut short, are not kept."""
  path = tmp_path / 'cells.csv'
  row = dict.fromkeys(cells_table.CSV_COLUMNS, '1')
  cells_table.write_cells(path, [{**row, 'mask_file': 'a_mask.png'}])
  cells_table.append_cells(path, [{**row, 'mask_file': 'b_mask.png'}])
  with open(path, 'a') as f:
    f.write('c.png,1,2,3')  # cut short
  kept = cells_table.read_cells(path, {'a_mask.png', 'c_mask.png'})
  assert [r['mask_file'] for r in kept] == ['a_mask.png']
  (tmp_path / 'other.csv').write_text('file,cell\nx,1\n')
  with pytest.raises(errors.DataError, match='other.csv: not the columns predict writes'):
    cells_table.read_cells(tmp_path / 'other.csv', {'a_mask.png'})


def test_reordered_cell_types_in_a_models_config_are_refused_naming_both_orders(
  tiny_model, tmp_path
):
  """The arrays' shapes do not change when config.json's cell types are reordered, but every
  cell's type would: the classes recorded with the weights are checked (a workdir's
  classes.json, a model folder's info.json), for predict, evaluation and a resume alike."""
  from wcsegnet_jax.training import checkpointing  # pylint: disable=g-import-not-at-top

  image = _crop_files(tmp_path / 'crops', 1)[0]
  workdir = tmp_path / 'workdir'
  shutil.copytree(tiny_model['workdir'], workdir)
  saved = json.loads((workdir / 'config.json').read_text())
  trained = saved['data']['cell_types']
  saved['data']['cell_types'] = trained[::-1]
  (workdir / 'config.json').write_text(json.dumps(saved))
  both = (
    rf'classes\.json: the checkpoints there output the classes background, '
    rf'{", ".join(trained)}, but .*config\.json gives background, '
    rf'{", ".join(trained[::-1])}: its data\.cell_types'
  )
  with pytest.raises(errors.CheckpointError, match=both):
    run(str(workdir), str(tmp_path / 'out'), [str(image)])
  with pytest.raises(errors.CheckpointError, match=both):
    checkpointing.check_resume_config(workdir, model_loading.load_workdir_config(workdir))
  folder = tmp_path / 'model'
  shutil.copytree(shipped_model.model_dir('paper'), folder)
  config = json.loads((folder / 'config.json').read_text())
  config['data']['cell_types'] = config['data']['cell_types'][::-1]
  (folder / 'config.json').write_text(json.dumps(config))
  with pytest.raises(
    shipped_model.PretrainedModelError,
    match=r'info\.json: the model outputs the classes background, neutrophil, '
    r'basophil, lymphocyte, but .*config\.json gives background, '
    r'lymphocyte, basophil, neutrophil',
  ):
    run(None, str(tmp_path / 'out2'), [str(image)], model=str(folder))
