"""Tests of wcsegnet_jax.data: reading raw layouts, the stratified split, the TFDS builds, errors.

Most tests run on small generated data (tests/fixtures.py); those marked `real` also run on the
public WBC Image Dataset where this machine has a copy, and are skipped elsewhere.
"""

import collections
import contextlib
import csv
import io
import logging as std_logging
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

from absl import logging as absl_logging
import cv2
import numpy as np
from PIL import Image
import pytest

import conftest
import fixtures
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors as errors_lib
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import label_maps
from wcsegnet_jax.data import records as records_lib
from wcsegnet_jax.data import splits
from wcsegnet_jax.data import tfds_builder

SOURCES = ('jiangxi', 'cellavision')
KEPT = classes.DEFAULT_CELL_TYPES
PAPER = classes.PAPER_TABLE
needs_real_data = pytest.mark.skipif(
  not (conftest.REAL_WBC_DIR / 'Dataset 1').is_dir(),
  reason=f'the WBC Image Dataset is not at {conftest.REAL_WBC_DIR}',
)


def read_split(builder, split):
  """[(file_id, example)] of one split, read through the builder's random-access source."""
  if split not in builder.info.splits:
    return []
  source = builder.as_data_source(split)
  return [(tfds_builder.as_str(source[i]['file_id']), source[i]) for i in range(len(source))]


def read_split_ids(builder):
  path = pathlib.Path(builder.data_dir) / tfds_builder.SPLIT_IDS_FILE
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['split', 'file_id', 'cell_type']
  return rows[1:]


def csv_types(csv_path):
  """{id as written in the CSV: type name}, parsed here independently of the reader."""
  with open(csv_path, newline='', encoding='utf-8-sig') as f:
    rows = list(csv.reader(f))
  return {r[0].strip(): classes.CSV_CELL_TYPES[int(r[1])] for r in rows[1:] if r}


def check_build(builder, expected_types, size=120):
  """The checks every build must pass. `expected_types`: {file_id: type name} of kept images."""
  examples = read_split(builder, 'train') + read_split(builder, 'test')
  ids = [fid for fid, _ in examples]
  assert sorted(ids) == sorted(expected_types)  # every kept image once; nothing else
  for fid, ex in examples:
    class_id = classes.CLASS_ID[expected_types[fid]]
    assert ex['image'].shape == (size, size, 3) and ex['image'].dtype == np.uint8, fid
    assert ex['label_map'].shape == (size, size) and ex['label_map'].dtype == np.uint8, fid
    assert ex['label_map'].max() < classes.NUM_CLASSES, fid
    assert int(ex['cell_type']) == class_id, fid
    # The nucleus takes the cell's type; there is no other class in the image.
    assert set(np.unique(ex['label_map'][ex['label_map'] > 0]).tolist()) == {class_id}, fid
  # Stratified 80:20: per type, round(0.2 n) test images (none for a type with one image).
  by_type = collections.Counter(expected_types.values())
  test_types = collections.Counter(expected_types[fid] for fid, _ in read_split(builder, 'test'))
  for cell_type, n in by_type.items():
    assert test_types[cell_type] == (int(round(0.2 * n)) if n > 1 else 0), cell_type
  # split_ids.csv lists every example once, in its split, with its type.
  rows = read_split_ids(builder)
  assert sorted(r[1] for r in rows) == sorted(ids)
  for split in ('train', 'test'):
    assert sorted((r[1], r[2]) for r in rows if r[0] == split) == sorted(
      (fid, expected_types[fid]) for fid, _ in read_split(builder, split)
    )
  return examples


# --- The generated data ---------------------------------------------------------------------------


@pytest.mark.parametrize('source', SOURCES)
def test_generated_build(wbc_raw, wbc_builders, source):
  manifest = wbc_raw[1][source]
  expected = {f.file_id: f.cell_type for f in manifest if f.cell_type in KEPT}
  assert len(expected) == 12  # 5 neutrophils, 5 lymphocytes, 2 basophils; the monocyte is left out
  examples = dict(check_build(wbc_builders[source], expected))
  for fake in manifest:
    if fake.file_id not in examples:
      continue
    ex = examples[fake.file_id]
    assert tfds_builder.as_str(ex['dataset']) == source
    if source == 'jiangxi':  # 120x120 already: pixels pass through unchanged, in RGB order
      np.testing.assert_array_equal(ex['image'], fake.image)
      # Stray gray levels snap back to their level: the label map is the clean mask's.
      np.testing.assert_array_equal(ex['label_map'], fake.label_map())
    else:  # 300 -> 120: each pixel takes the class covering most of it
      expected_map = label_maps.resize_label_map(fake.label_map(), 120)
      np.testing.assert_array_equal(ex['label_map'], expected_map)
      small = cv2.resize(fake.image, (120, 120), interpolation=cv2.INTER_AREA)
      assert np.abs(ex['image'].astype(int) - small).max() <= 1


def test_generated_split_sizes(wbc_builders):
  for builder in wbc_builders.values():
    # Neutrophils 5 -> 1 test, lymphocytes 5 -> 1, basophils 2 -> round(0.4) = 0.
    assert builder.info.splits['train'].num_examples == 10
    assert builder.info.splits['test'].num_examples == 2


def test_prepare_twice_reuses_the_build(wbc_config, wbc_builders):
  again = tfds_builder.prepare('jiangxi', wbc_config.data)
  assert again.data_dir == wbc_builders['jiangxi'].data_dir
  assert read_split_ids(again) == read_split_ids(wbc_builders['jiangxi'])


def test_split_seed_gives_its_own_build(wbc_raw, tmp_path):
  """Builds are named by their settings: another split seed must not reuse a stale build."""
  raw_dir, manifest = wbc_raw
  test_ids = {}
  for seed in (0, 0, 3):
    c = conftest.data_config(raw_dir, tmp_path / f'tfds_{len(test_ids)}', split_seed=seed)
    builder = tfds_builder.prepare('jiangxi', c.data)
    ids = sorted(fid for fid, _ in read_split(builder, 'test'))
    listed = tfds_builder.split_records('jiangxi', raw_dir, PAPER, 0.2, seed)
    assert ids == sorted(r.file_id for r in listed['test'])
    test_ids.setdefault(seed, ids)
    assert test_ids[seed] == ids  # same seed, same ids (from another TFDS folder)
  assert test_ids[0] != test_ids[3]
  # Both seeds built in one folder: each its own build.
  c0 = conftest.data_config(raw_dir, tmp_path / 'shared', split_seed=0)
  c3 = conftest.data_config(raw_dir, tmp_path / 'shared', split_seed=3)
  b0 = tfds_builder.prepare('jiangxi', c0.data)
  b3 = tfds_builder.prepare('jiangxi', c3.data)
  assert b0.data_dir != b3.data_dir
  assert sorted(f for f, _ in read_split(b3, 'test')) == test_ids[3]
  assert {r[1] for r in read_split_ids(b3) if r[0] == 'test'} == set(test_ids[3])


def test_csv_ids_without_leading_zeros(wbc_raw):
  raw_dir, manifest = wbc_raw
  records = records_lib.list_wbc_records(raw_dir, 'jiangxi')
  assert {r.file_id: r.cell_type for r in records} == {
    f.file_id: f.cell_type for f in manifest['jiangxi']
  }
  assert all(r.file_id.startswith('0') for r in records)  # '002' matched to CSV row '2'
  assert b'\r\n' in (raw_dir / 'Class Labels of Dataset 1.csv').read_bytes()


def test_raw_dir_from_the_environment(wbc_raw, wbc_builders, monkeypatch, tmp_path):
  monkeypatch.setenv(records_lib.RAW_DIR_ENV, str(wbc_raw[0]))
  monkeypatch.setenv(tfds_builder.TFDS_DIR_ENV, str(tmp_path / 'env_tfds'))
  c = conftest.data_config('', '')
  builder = tfds_builder.get_builder('jiangxi', c.data)
  assert builder.builder_config.raw_dir == wbc_raw[0]
  assert builder.builder_config.name == wbc_builders['jiangxi'].builder_config.name
  assert str(builder.data_dir).startswith(str(tmp_path / 'env_tfds'))


def test_too_few_images_to_split(tmp_path):
  """One image per type: all go to train; the missing test split is a DataError when asked for."""
  root = tmp_path / 'raw'
  fixtures.make_wbc_raw(root, n_per_type={1: 1, 2: 1, 5: 1})
  c = conftest.data_config(root, tmp_path / 'tfds')
  builder = tfds_builder.prepare('jiangxi', c.data)
  assert len(tfds_builder.data_source(builder, 'train')) == 3
  with pytest.raises(errors_lib.DataError, match="no 'test' split"):
    tfds_builder.data_source(builder, 'test')
  assert [r[0] for r in read_split_ids(builder)] == ['train'] * 3


def test_changed_raw_folder_gets_a_new_build(tmp_path):
  """A build is named by its raw files: a relabelled image is not served from the stale build."""
  root = tmp_path / 'raw'
  manifest = fixtures.make_wbc_raw(root, n_per_type={1: 3, 2: 3})['jiangxi']
  c = conftest.data_config(root, tmp_path / 'tfds', cell_types=('neutrophil', 'lymphocyte'))
  before = tfds_builder.prepare('jiangxi', c.data)
  relabelled = manifest[0]
  new_code = 2 if relabelled.type_code == 1 else 1
  fixtures.write_csv(
    root / 'Class Labels of Dataset 1.csv',
    [(f.csv_id, new_code if f is relabelled else f.type_code) for f in manifest],
  )
  after = tfds_builder.prepare('jiangxi', c.data)
  assert after.data_dir != before.data_dir
  examples = dict(read_split(after, 'train') + read_split(after, 'test'))
  want = classes.table_of(c.data).type_id(classes.CSV_CELL_TYPES[new_code])
  assert int(examples[relabelled.file_id]['cell_type']) == want
  assert set(np.unique(examples[relabelled.file_id]['label_map']).tolist()) == {0, want}


# --- The split ------------------------------------------------------------------------------------


def fake_records(n_per_type, prefix=''):
  return [
    records_lib.RawRecord(
      f'{prefix}{t[:3]}{i:03d}', pathlib.Path('x.bmp'), pathlib.Path('x.png'), t
    )
    for t, n in n_per_type.items()
    for i in range(n)
  ]


@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 7, 8, 12, 13, 17, 30, 141])
def test_split_stratified_counts(n):
  records = fake_records({'neutrophil': n, 'lymphocyte': n + 3, 'basophil': 1})
  split = splits.stratified_split(records, 0.2, seed=0)
  for cell_type, count in (('neutrophil', n), ('lymphocyte', n + 3), ('basophil', 1)):
    n_test = sum(r.cell_type == cell_type for r in split['test'])
    n_train = sum(r.cell_type == cell_type for r in split['train'])
    assert n_test == (int(round(0.2 * count)) if count > 1 else 0)
    assert n_test + n_train == count
  assert sorted(r.file_id for r in split['train'] + split['test']) == sorted(
    r.file_id for r in records
  )


def test_split_deterministic_and_seeded():
  records = fake_records({'neutrophil': 40, 'lymphocyte': 20, 'basophil': 6})
  test_ids = lambda s: [r.file_id for r in s['test']]
  a = splits.stratified_split(records, 0.2, seed=0)
  b = splits.stratified_split(list(reversed(records)), 0.2, seed=0)  # listing order is irrelevant
  c = splits.stratified_split(records, 0.2, seed=1)
  assert test_ids(a) == test_ids(b)
  assert test_ids(a) != test_ids(c)
  assert len(test_ids(a)) == len(test_ids(c)) == 8 + 4 + 1


# --- The folder source ----------------------------------------------------------------------------


@pytest.mark.parametrize('with_labels_csv', [True, False])
def test_folder_source(tmp_path, with_labels_csv):
  folder = tmp_path / 'my_cells'
  manifest = fixtures.make_folder_raw(folder, with_labels_csv=with_labels_csv)
  c = conftest.data_config('', tmp_path / 'tfds', folder_dir=str(folder), datasets=('folder',))
  builder = tfds_builder.prepare('folder', c.data)
  expected = {f.file_id: f.cell_type for f in manifest if f.cell_type in KEPT}
  examples = check_build(builder, expected)
  assert len(expected) == 8  # the eosinophil (with labels.csv) is left out
  for _, ex in examples:
    assert tfds_builder.as_str(ex['dataset']) == 'my_cells'
  by_id = {f.file_id: f for f in manifest}
  for fid, ex in examples:  # 100 -> 120
    want = label_maps.resize_label_map(by_id[fid].label_map(), 120)
    np.testing.assert_array_equal(ex['label_map'], want)


# --- Bad inputs -----------------------------------------------------------------------------------


def _small_raw(tmp_path):
  root = tmp_path / 'raw'
  manifest = fixtures.make_wbc_raw(root, n_per_type={1: 3, 2: 2, 5: 1}, size2=120)
  return root, manifest['jiangxi'][0].file_id


def _set_csv(root, rows):
  fixtures.write_csv(root / 'Class Labels of Dataset 1.csv', rows)


def _csv_rows(root):
  return list(csv.reader(open(root / 'Class Labels of Dataset 1.csv', newline='')))[1:]


def _missing_mask(root, fid):
  (root / 'Dataset 1' / f'{fid}.png').unlink()
  return root / 'Dataset 1' / f'{fid}.bmp'


def _missing_image(root, fid):
  (root / 'Dataset 1' / f'{fid}.bmp').unlink()
  return root / 'Dataset 1' / f'{fid}.png'


def _size_mismatch(root, fid):
  fixtures.write_gray(root / 'Dataset 1' / f'{fid}.png', np.zeros((100, 120), np.uint8))
  return root / 'Dataset 1' / f'{fid}.png'


def _garbage_image(root, fid):
  (root / 'Dataset 1' / f'{fid}.bmp').write_bytes(b'BM not really a bitmap' * 40)
  return root / 'Dataset 1' / f'{fid}.bmp'


def _garbage_mask(root, fid):
  (root / 'Dataset 1' / f'{fid}.png').write_bytes(b'\x89PNG truncated' * 40)
  return root / 'Dataset 1' / f'{fid}.png'


def _image_16bit(root, fid):
  (root / 'Dataset 1' / f'{fid}.bmp').unlink()
  path = root / 'Dataset 1' / f'{fid}.tif'
  assert cv2.imwrite(str(path), np.full((120, 120, 3), 1000, np.uint16))
  return path


def _mask_16bit(root, fid):
  path = root / 'Dataset 1' / f'{fid}.png'
  assert cv2.imwrite(str(path), np.full((120, 120), 255 * 256, np.uint16))
  return path


def _colour_mask(root, fid):
  path = root / 'Dataset 1' / f'{fid}.png'
  mask = np.zeros((120, 120, 3), np.uint8)
  mask[10:20, 10:20] = (0, 0, 255)
  assert cv2.imwrite(str(path), mask)
  return path


def _noise_mask(root, fid):
  noise = np.random.default_rng(0).integers(0, 256, size=(120, 120), dtype=np.uint8)
  fixtures.write_gray(root / 'Dataset 1' / f'{fid}.png', noise)
  return root / 'Dataset 1' / f'{fid}.png'


def _label_out_of_range(label):
  def corrupt(root, fid):
    rows = _csv_rows(root)
    rows[1][1] = label
    _set_csv(root, rows)
    return root / 'Class Labels of Dataset 1.csv'

  return corrupt


def _image_without_row(root, fid):
  _set_csv(root, [r for r in _csv_rows(root) if r[0] != str(int(fid))])
  return root / 'Dataset 1' / f'{fid}.bmp'


def _row_without_image(root, fid):
  _set_csv(root, _csv_rows(root) + [['999', '1']])
  return root / 'Class Labels of Dataset 1.csv'


def _duplicate_row(root, fid):
  rows = _csv_rows(root)
  _set_csv(root, rows + [rows[0]])
  return root / 'Class Labels of Dataset 1.csv'


def _missing_csv(root, fid):
  (root / 'Class Labels of Dataset 1.csv').unlink()
  return root / 'Class Labels of Dataset 1.csv'


def _missing_subset(root, fid):
  shutil.rmtree(root / 'Dataset 1')
  return root / 'Dataset 1'


def _all_background_mask(root, fid):
  fixtures.write_gray(root / 'Dataset 1' / f'{fid}.png', np.zeros((120, 120), np.uint8))
  return root / 'Dataset 1' / f'{fid}.png'


def _zero_one_mask(root, fid):
  path = root / 'Dataset 1' / f'{fid}.png'
  nucleus = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 192
  fixtures.write_gray(path, nucleus.astype(np.uint8))  # 1 nucleus, 0 the rest: a common export
  return path


def _truncated_image(suffix):
  def corrupt(root, fid):
    bmp = root / 'Dataset 1' / f'{fid}.bmp'
    path = bmp.with_suffix(suffix)
    image = cv2.imread(str(bmp))
    bmp.unlink()
    assert cv2.imwrite(str(path), image)
    return fixtures.truncate(path)

  return corrupt


def _truncated_mask(root, fid):
  return fixtures.truncate(root / 'Dataset 1' / f'{fid}.png')


BAD_INPUTS = {
  'all_background_mask': (_all_background_mask, 'no nucleus pixel.*all background'),
  'zero_one_mask': (_zero_one_mask, '0 background, 128 cytoplasm, 255 nucleus.*0/1 mask'),
  'truncated_bmp_image': (_truncated_image('.bmp'), 'truncated or corrupt BMP'),
  'truncated_jpeg_image': (_truncated_image('.jpg'), 'truncated JPEG'),
  'truncated_tif_image': (_truncated_image('.tif'), 'not a readable image'),
  'truncated_png_mask': (_truncated_mask, 'truncated PNG'),
  'missing_mask': (_missing_mask, 'no mask'),
  'missing_image': (_missing_image, 'without an image'),
  'size_mismatch': (_size_mismatch, '120x100'),
  'unreadable_image': (_garbage_image, 'not a readable image'),
  'unreadable_mask': (_garbage_mask, 'not a readable mask'),
  'image_16bit': (_image_16bit, 'uint16'),
  'mask_16bit': (_mask_16bit, 'uint16'),
  'colour_mask': (_colour_mask, 'colour mask'),
  'noise_mask': (_noise_mask, '0/128/255'),
  'label_6': (_label_out_of_range('6'), "label '6'"),
  'label_0': (_label_out_of_range('0'), "label '0'"),
  'label_text': (_label_out_of_range('platelet'), "label 'platelet'"),
  'image_without_csv_row': (_image_without_row, 'has no row'),
  'csv_row_without_image': (_row_without_image, r"no image file.*'999'"),
  'duplicate_csv_row': (_duplicate_row, 'listed twice'),
  'missing_csv': (_missing_csv, 'does not exist'),
  'missing_subset_folder': (_missing_subset, 'does not exist'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_raises_data_error_naming_the_file(tmp_path, case):
  """Each bad input raises DataError naming the file, through `prepare` (as users meet it)."""
  root, fid = _small_raw(tmp_path)
  corrupt, what = BAD_INPUTS[case]
  path = corrupt(root, fid)
  c = conftest.data_config(root, tmp_path / 'tfds')
  with pytest.raises(errors_lib.DataError, match=re.escape(str(path))) as info:
    tfds_builder.prepare('jiangxi', c.data)
  assert re.search(what, str(info.value)), str(info.value)
  assert type(info.value) is errors_lib.DataError  # not wrapped by TFDS
  leftovers = [p for p in (tmp_path / 'tfds').rglob('*')] if (tmp_path / 'tfds').exists() else []
  assert not leftovers  # a failed build leaves no empty TFDS folders behind


def test_local_build_does_not_announce_a_download(tmp_path, capfd):
  root, _ = _small_raw(tmp_path)
  c = conftest.data_config(root, tmp_path / 'tfds')
  existing = tmp_path / 'tfds' / 'other_build'
  existing.mkdir(parents=True)  # a folder that was there before is not the build's to remove
  with absltest_log_capture() as records:
    tfds_builder.prepare('jiangxi', c.data)
  out, err = capfd.readouterr()
  assert 'Downloading and preparing' not in out and 'Unknown size' not in out
  assert 'Shuffling' not in out + err  # TFDS's progress bars
  messages = [r.getMessage() for r in records]
  assert not [m for m in messages if 'custom data configuration' in m or 'Done writing' in m]
  assert any(m.startswith('Building jiangxi examples') for m in messages)
  assert existing.is_dir()
  assert tfds_builder.tfds_utils.tqdm_utils._active  # TFDS's bars are back for other users


def test_empty_after_filtering(tmp_path):
  root, _ = _small_raw(tmp_path)  # neutrophils, lymphocytes and a basophil: no eosinophil
  c = conftest.data_config(root, tmp_path / 'tfds', cell_types=('eosinophil',))
  with pytest.raises(errors_lib.DataError, match=re.escape(str(root)) + '.*eosinophil'):
    tfds_builder.prepare('jiangxi', c.data)


def test_a_configured_type_without_an_image_is_named(tmp_path):
  root, _ = _small_raw(tmp_path)
  c = conftest.data_config(
    root, tmp_path / 'tfds', cell_types=('neutrophil', 'monocyte', 'lymphocyte')
  )
  with pytest.raises(
    errors_lib.DataError, match=re.escape(str(root)) + ".*no image of the cell type 'monocyte'"
  ):
    tfds_builder.prepare('jiangxi', c.data)


def test_raw_dir_does_not_exist(tmp_path):
  missing = tmp_path / 'nowhere'
  c = conftest.data_config(missing, tmp_path / 'tfds')
  with pytest.raises(errors_lib.DataError, match=re.escape(str(missing))):
    tfds_builder.prepare('jiangxi', c.data)
  c = conftest.data_config('', tmp_path / 'tfds', folder_dir=str(missing))
  with pytest.raises(errors_lib.DataError, match=re.escape(str(missing))):
    tfds_builder.prepare('folder', c.data)


def test_unknown_source(wbc_config):
  with pytest.raises(errors_lib.DataError, match="unknown dataset 'kaggle'"):
    tfds_builder.prepare('kaggle', wbc_config.data)


def test_folder_label_map_with_two_classes(tmp_path):
  folder = tmp_path / 'cells'
  manifest = fixtures.make_folder_raw(folder, with_labels_csv=False)
  bad = folder / 'masks' / f'{manifest[0].file_id}.png'
  label_map = manifest[0].label_map()
  label_map[:5, :5] = 3 if label_map.max() != 3 else 1
  fixtures.write_gray(bad, label_map)
  c = conftest.data_config('', tmp_path / 'tfds', folder_dir=str(folder))
  with pytest.raises(errors_lib.DataError, match=re.escape(str(bad)) + '.*exactly one cell type'):
    tfds_builder.prepare('folder', c.data)
  label_map[:5, :5], label_map[-5:, -5:] = 7, 200
  fixtures.write_gray(bad, label_map)
  with pytest.raises(errors_lib.DataError, match=re.escape(str(bad)) + '.*outside') as info:
    tfds_builder.prepare('folder', c.data)
  # The values out of range, and the valid ids beside them.
  assert re.search(
    r'values \[7, 200\] outside the class ids \(0 background, 1 neutrophil, '
    r'2 basophil, 3 lymphocyte\)',
    str(info.value),
  ), str(info.value)


def test_folder_palette_label_maps_read_as_class_ids(tmp_path):
  """Label maps saved as palette PNGs (class colours, index = class id) build like gray ones."""
  folder = tmp_path / 'cells'
  manifest = fixtures.make_folder_raw(folder, with_labels_csv=False)
  for fake in manifest:
    fixtures.write_palette_png(
      folder / 'masks' / f'{fake.file_id}.png', fake.label_map(), classes.CLASS_COLORS
    )
  mask = cv2.imread(str(folder / 'masks' / f'{manifest[0].file_id}.png'), cv2.IMREAD_UNCHANGED)
  assert mask.ndim == 3  # OpenCV alone sees a colour mask
  c = conftest.data_config('', tmp_path / 'tfds', folder_dir=str(folder))
  builder = tfds_builder.prepare('folder', c.data)
  examples = check_build(builder, {f.file_id: f.cell_type for f in manifest})
  by_id = {f.file_id: f for f in manifest}
  for fid, ex in examples:
    want = label_maps.resize_label_map(by_id[fid].label_map(), 120)
    np.testing.assert_array_equal(ex['label_map'], want)


def test_folder_zero_one_masks_with_labels_csv(tmp_path):
  """With labels.csv, 0/1 masks would all snap to background: an error naming the file."""
  folder = tmp_path / 'cells'
  manifest = fixtures.make_folder_raw(folder, with_labels_csv=True)
  for fake in manifest:
    fixtures.write_gray(
      folder / 'masks' / f'{fake.file_id}.png', (fake.mask == 255).astype(np.uint8)
    )
  c = conftest.data_config('', tmp_path / 'tfds', folder_dir=str(folder))
  with pytest.raises(errors_lib.DataError) as info:
    tfds_builder.prepare('folder', c.data)
  message = str(info.value)
  assert str(folder / 'masks') in message and 'no nucleus pixel' in message
  assert 'looks like a 0/1 mask' in message
  assert '0 background, 128 cytoplasm, 255 nucleus' in message


def test_label_map_without_nucleus(tmp_path):
  folder = tmp_path / 'cells'
  manifest = fixtures.make_folder_raw(folder, with_labels_csv=False)
  bad = folder / 'masks' / f'{manifest[0].file_id}.png'
  fixtures.write_gray(bad, np.zeros_like(manifest[0].mask))
  with pytest.raises(errors_lib.DataError, match=re.escape(str(bad)) + '.*without a nucleus pixel'):
    records_lib.list_folder_records(folder, PAPER)


# --- Truncated and corrupt files ----------------------------------------------------------------


@pytest.mark.parametrize('suffix', ['.bmp', '.png', '.jpg', '.jpeg', '.tif'])
@pytest.mark.parametrize('keep', [0.5, 0.98])
def test_truncated_files_are_rejected_quietly(tmp_path, capfd, suffix, keep):
  """A cut image or mask is an error naming the file; no bare decoder line reaches stderr."""
  rng = np.random.default_rng(0)
  mask = fixtures.cell_mask(rng, 64)
  image_path, mask_path = tmp_path / f'image{suffix}', tmp_path / f'mask{suffix}'
  fixtures.write_rgb(image_path, fixtures.cell_image(rng, mask))
  fixtures.write_gray(mask_path, mask)
  assert image_files.read_rgb(image_path).shape == (64, 64, 3)  # whole, they read
  assert image_files.read_mask(mask_path).shape == (64, 64)
  for path, read in ((image_path, image_files.read_rgb), (mask_path, image_files.read_mask)):
    fixtures.truncate(path, keep)
    with pytest.raises(errors_lib.DataError, match=re.escape(str(path)) + ': not a readable'):
      read(path)
  assert capfd.readouterr().err == ''


def test_corrupt_jpeg_that_still_ends_well_is_rejected_quietly(tmp_path, capfd):
  """Half a JPEG with its end marker put back passes the structure walk; libjpeg then decodes
  it partly gray with only a bare warning. It is an error naming the file, and the warning is
  not printed."""
  path = tmp_path / 'cell.jpg'
  rng = np.random.default_rng(0)
  fixtures.write_rgb(path, fixtures.cell_image(rng, fixtures.cell_mask(rng, 100)))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2] + b'\xff\xd9')
  with pytest.raises(errors_lib.DataError, match=re.escape(str(path)) + ': .*corrupt JPEG'):
    image_files.read_rgb(path)
  assert capfd.readouterr().err == ''


def test_corrupt_png_fails_its_crc(tmp_path):
  path = tmp_path / 'mask.png'
  fixtures.write_gray(path, fixtures.cell_mask(np.random.default_rng(0), 64))
  data = bytearray(path.read_bytes())
  data[60] ^= 0xFF  # inside the IDAT chunk: the file is whole but wrong
  path.write_bytes(bytes(data))
  with pytest.raises(
    errors_lib.DataError, match=re.escape(str(path)) + '.*IDAT chunk fails its CRC'
  ):
    image_files.read_mask(path)


def test_jpeg_structure_walks_to_the_end_marker(tmp_path):
  """FFD9 inside a comment is not the end; data after the real end (e.g. a trailer) is fine."""
  image = fixtures.cell_image(np.random.default_rng(0), np.zeros((40, 40), np.uint8))
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', comment=b'\xff\xd9' * 8)
  data = buffer.getvalue()
  assert image_files.file_structure_problem(data) is None
  assert image_files.file_structure_problem(data + b'trailer\xff\x00') is None
  cut = data.index(b'\xff\xd9') + 100  # past the comment's FFD9, short of the image's end
  assert 'truncated JPEG' in image_files.file_structure_problem(data[:cut])


# --- Label CSVs -----------------------------------------------------------------------------------


def test_label_csv_without_header_keeps_its_first_row(tmp_path):
  root, _ = _small_raw(tmp_path)
  csv_path = root / 'Class Labels of Dataset 1.csv'
  rows = _csv_rows(root)
  fixtures.write_csv(csv_path, rows, header=False)
  assert records_lib.read_cell_type_csv(csv_path) == {
    i: classes.CSV_CELL_TYPES[int(label)] for i, label in rows
  }
  assert len(records_lib.list_wbc_records(root, 'jiangxi')) == len(rows)
  rows[0][1] = '6'  # a first row with a bad label is a row, not a header
  fixtures.write_csv(csv_path, rows, header=False)
  with pytest.raises(errors_lib.DataError, match=re.escape(str(csv_path)) + ":1: label '6'"):
    records_lib.read_cell_type_csv(csv_path)
  folder = tmp_path / 'cells'
  manifest = fixtures.make_folder_raw(folder)
  fixtures.write_csv(
    folder / 'labels.csv', [(f.csv_id, f.cell_type) for f in manifest], header=False
  )
  assert {r.file_id: r.cell_type for r in records_lib.list_folder_records(folder, PAPER)} == {
    f.file_id: f.cell_type for f in manifest
  }


@pytest.mark.parametrize('kind', ['gray', 'rgba'])
def test_gray_and_rgba_images_are_converted(tmp_path, kind):
  root, fid = _small_raw(tmp_path)
  rgb = np.random.default_rng(0).integers(0, 256, size=(120, 120, 3), dtype=np.uint8)
  path = root / 'Dataset 1' / f'{fid}.bmp'
  if kind == 'gray':
    assert cv2.imwrite(str(path), rgb[..., 0])
    want = np.repeat(rgb[..., :1], 3, axis=-1)
  else:
    bgra = np.concatenate([rgb[..., ::-1], np.full((120, 120, 1), 7, np.uint8)], -1)
    assert cv2.imwrite(str(path), bgra)
    want = rgb
  assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == want.shape[:2] + (
    () if kind == 'gray' else (4,)
  )  # the file really is gray / RGBA
  builder = tfds_builder.prepare('jiangxi', conftest.data_config(root, tmp_path / 'tfds').data)
  examples = dict(read_split(builder, 'train') + read_split(builder, 'test'))
  np.testing.assert_array_equal(examples[fid]['image'], want)


@pytest.mark.parametrize('suffix', ['.jpg', '.png'])
def test_images_are_read_as_their_exif_orientation_shows_them(tmp_path, suffix):
  """Cameras store a portrait photo on its side with an EXIF orientation: every viewer (PIL's
  exif_transpose here) shows it turned, and so must every reader of ours."""
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  stored = np.random.default_rng(0).integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
  for orientation in range(1, 9):
    path = tmp_path / f'photo_{orientation}{suffix}'
    fixtures.write_with_orientation(path, stored, orientation)
    with Image.open(path) as image:
      shown = np.asarray(ImageOps.exif_transpose(image).convert('RGB'))
    got = image_files.read_rgb(path)
    assert got.shape == shown.shape, orientation
    assert np.abs(got.astype(int) - shown).mean() < 2, orientation  # JPEG decoders differ


def test_a_rotated_photo_is_paired_with_its_mask_as_viewers_show_both(tmp_path):
  """A 100x120 portrait stored as 120x100 with orientation 6, its mask drawn as it is shown:
  training reads a pair of one size, the nucleus where the mask puts it."""
  root, fid = _small_raw(tmp_path)
  mask = image_files.read_mask(root / 'Dataset 1' / f'{fid}.png')[:120, :100]
  image = np.where(mask[..., None] > 200, 40, 220).astype(np.uint8).repeat(3, -1)
  fixtures.write_gray(root / 'Dataset 1' / f'{fid}.png', mask)
  (root / 'Dataset 1' / f'{fid}.bmp').unlink()
  fixtures.write_with_orientation(root / 'Dataset 1' / f'{fid}.jpg', np.rot90(image, 1), 6)
  record = next(r for r in records_lib.list_wbc_records(root, 'jiangxi') if r.file_id == fid)
  example = label_maps.load_example(record, PAPER, 64, 40, 0.01)
  dark = example['image'].mean(-1) < 130
  assert (dark == (example['label_map'] > 0)).mean() > 0.95


def _write_png(path, pixels, color_type):
  """A minimal 8-bit PNG by hand (OpenCV cannot write 2-channel files)."""
  h, w = pixels.shape[:2]
  rows = b''.join(b'\x00' + pixels[y].tobytes() for y in range(h))
  chunk = lambda tag, data: (
    struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))
  )
  path.write_bytes(
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, color_type, 0, 0, 0))
    + chunk(b'IDAT', zlib.compress(rows))
    + chunk(b'IEND', b'')
  )


def test_two_channel_and_gray_files(tmp_path):
  """Gray+alpha (2-channel) PNGs read as their gray in RGB; 3-channel gray masks as one channel."""
  gray = np.random.default_rng(0).integers(0, 256, size=(20, 30), dtype=np.uint8)
  path = tmp_path / 'la.png'
  _write_png(path, np.stack([gray, np.full_like(gray, 200)], -1), color_type=4)
  np.testing.assert_array_equal(image_files.read_rgb(path), np.repeat(gray[..., None], 3, -1))
  path = tmp_path / 'mask.png'
  assert cv2.imwrite(str(path), np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(image_files.read_mask(path), gray)


def test_stray_gray_levels_snap(tmp_path):
  """A few stray levels are snapped; just over the allowed fraction of off-level pixels is not."""
  mask = np.zeros((100, 100), np.uint8)
  mask[20:60, 20:60] = 128
  mask[30:50, 30:50] = 255
  record = records_lib.RawRecord('1', tmp_path / '1.bmp', tmp_path / '1.png', 'basophil')
  noisy = mask.copy()
  noisy[0, :99] = 50  # 0.99% off-level: allowed
  noisy[25, 25], noisy[35, 35], noisy[1, 1] = 160, 220, 3  # within tolerance: snapped
  got = label_maps.label_map_from_mask(noisy, record, PAPER, 40, 0.01)
  np.testing.assert_array_equal(got, np.where(mask == 255, classes.CLASS_ID['basophil'], 0))
  noisy[1, :2] = 50  # 1.01%: another scheme
  with pytest.raises(errors_lib.DataError, match=re.escape(str(record.mask_path))):
    label_maps.label_map_from_mask(noisy, record, PAPER, 40, 0.01)


def test_far_gray_levels_snapped_are_logged(tmp_path, caplog):
  """Pixels snapped from farther than the tolerance are counted in one line per file."""
  mask = np.zeros((100, 100), np.uint8)
  mask[30:50, 30:50] = 255
  path = tmp_path / '1.png'
  caplog.set_level('INFO')
  label_maps.snap_mask_levels(np.where(mask == 0, 3, mask).astype(np.uint8), path, 40, 0.01)
  assert not caplog.records  # near the levels only: nothing to say
  noisy = mask.copy()
  noisy[0, :37] = 60
  label_maps.snap_mask_levels(noisy, path, 40, 0.01)
  assert len(caplog.records) == 1
  assert str(path) in caplog.text and 'snapped 37 mask pixels' in caplog.text


# --- The real data --------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def real_builders(tmp_path_factory):
  c = conftest.data_config(conftest.REAL_WBC_DIR, tmp_path_factory.mktemp('real_tfds'))
  return {source: tfds_builder.prepare(source, c.data) for source in SOURCES}


@needs_real_data
@pytest.mark.parametrize('source', SOURCES)
def test_real_build(real_builders, source):
  subset = records_lib.WBC_SUBSETS[source]
  folder = conftest.REAL_WBC_DIR / subset
  types = csv_types(conftest.REAL_WBC_DIR / f'Class Labels of {subset}.csv')
  files = {p.stem: p for p in folder.glob('*.bmp')}
  assert len(files) == len(types)
  expected = {stem: types[str(int(stem))] for stem in files if types[str(int(stem))] in KEPT}
  assert len(expected) == sum(t in KEPT for t in types.values())
  builder = real_builders[source]
  assert sum(s.num_examples for s in builder.info.splits.values()) == len(expected)
  check_build(builder, expected)


@needs_real_data
@pytest.mark.parametrize('source', SOURCES)
def test_real_split_determinism(source):
  split = lambda seed: tfds_builder.split_records(source, conftest.REAL_WBC_DIR, PAPER, 0.2, seed)
  test_ids = lambda s: [r.file_id for r in s['test']]
  assert test_ids(split(0)) == test_ids(split(0))
  assert test_ids(split(0)) != test_ids(split(1))
  assert len(test_ids(split(0))) == len(test_ids(split(1)))


def test_nucleus_that_vanishes_in_the_resize_is_an_error(tmp_path):
  """A nucleus so small that shrinking drops it would train as a cell without one."""
  rng = np.random.default_rng(0)
  image = fixtures.cell_image(rng, fixtures.cell_mask(rng, 300))
  mask = np.zeros((300, 300), np.uint8)
  mask[1, 1] = 255  # 300 -> 120: one source pixel covers 0.16 of a pixel, never its majority
  fixtures.write_rgb(tmp_path / '001.bmp', image)
  fixtures.write_gray(tmp_path / '001.png', mask)
  record = records_lib.RawRecord('1', tmp_path / '001.bmp', tmp_path / '001.png', 'neutrophil')
  with pytest.raises(
    errors_lib.DataError,
    match=re.escape(str(tmp_path / '001.png'))
    + r'.*nucleus \(1 pixels\) vanishes.*300x300.*120x120',
  ):
    label_maps.load_example(record, PAPER, 120, 40, 0.01)
  # Kept at full size.
  assert label_maps.load_example(record, PAPER, 300, 40, 0.01)['label_map'][1, 1] == 1


def _centroid(label_map, class_id):
  ys, xs = np.nonzero(label_map == class_id)
  return ys.mean(), xs.mean()


def _disc_with_a_segment(size, offset):
  """Class 3 a disc, its right part class 1 (a straight edge and two arcs)."""
  yy, xx = np.mgrid[:size, :size]
  centre, radius = (size - 1) / 2 + offset, 0.3 * size
  label_map = np.where((yy - centre) ** 2 + (xx - centre) ** 2 < radius**2, 3, 0)
  return np.where((label_map == 3) & (xx > centre + radius / 2), 1, label_map).astype(np.uint8)


@pytest.mark.parametrize('source_size', [300, 100])
def test_resized_label_map_stays_on_its_image(source_size):
  """Shrunk (300 -> 120) or enlarged (100 -> 120), a class's centroid stays on the image's
  content: within 0.05 px on average over sub-pixel placements (one edge alone is off by up to
  half a pixel), where cv2's nearest put it 0.4 px down-right. Areas scale with the pixels' (on
  average); no label appears that was not there."""
  scale = 120 / source_size
  errors, area_ratios = [], []
  for offset in np.linspace(0, 5, 10, endpoint=False):  # 5 source px: whole pixel cycles
    label_map = _disc_with_a_segment(source_size, offset)
    resized = label_maps.resize_label_map(label_map, 120)
    assert resized.shape == (120, 120) and resized.dtype == np.uint8
    assert set(np.unique(resized)) == {0, 1, 3}
    for class_id in (1, 3):
      source_centroid = np.array(_centroid(label_map, class_id))
      errors.append(_centroid(resized, class_id) - ((source_centroid + 0.5) * scale - 0.5))
      area_ratios.append((resized == class_id).sum() / ((label_map == class_id).sum() * scale**2))
  np.testing.assert_allclose(np.mean(errors, axis=0), 0, atol=0.05)
  assert abs(np.mean(area_ratios) - 1) < 0.01


def test_label_map_at_its_size_is_unchanged():
  label_map = np.random.default_rng(0).integers(0, 4, (120, 120), dtype=np.uint8)
  assert label_maps.resize_label_map(label_map, 120) is label_map


@contextlib.contextmanager
def absltest_log_capture():
  """The records that reach absl's handler (after the logger's filters)."""
  records = []

  class Keep(std_logging.Handler):
    def emit(self, record):
      records.append(record)

  handler, logger = Keep(), absl_logging.get_absl_logger()
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(std_logging.INFO)
  try:
    yield records
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_jpeg_reads_without_a_stderr(tmp_path):
  """A daemon without fd 2 (`2>&-`) still reads JPEGs: the corrupt-data capture steps aside."""
  path = tmp_path / 'cell.jpg'
  rng = np.random.default_rng(0)
  fixtures.write_rgb(path, fixtures.cell_image(rng, fixtures.cell_mask(rng, 50)))
  code = (
    'import pathlib, sys; sys.stderr = None; from wcsegnet_jax.data import image_files; '
    f'print(image_files.read_rgb(pathlib.Path({str(path)!r})).shape)'
  )
  result = subprocess.run(
    f'{sys.executable} -c "{code}" 2>&-',
    shell=True,
    cwd=conftest.ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.stdout.strip() == '(50, 50, 3)', result.stderr


def test_images_of_types_without_a_class_are_named_when_left_out(caplog):
  """An evaluation folder's monocyte is not scored by a 3-type model, and the log says so."""
  records = [
    records_lib.RawRecord(f'{i:03d}', pathlib.Path('x.bmp'), pathlib.Path('x.png'), t)
    for i, t in enumerate(('neutrophil', 'monocyte', 'lymphocyte', 'eosinophil'))
  ]
  caplog.set_level('INFO')
  kept = records_lib.filter_cell_types(
    records, classes.DEFAULT_CELL_TYPES, where='folder data in d', every_type=False
  )
  assert [r.file_id for r in kept] == ['000', '002']
  assert [r.getMessage() for r in caplog.records] == [
    'folder data in d: left out 2 image(s) of cell types the model has no class for '
    "(1 eosinophil, 1 monocyte: 001, 003; config.data.cell_types=('neutrophil', 'basophil', "
    "'lymphocyte'))"
  ]
  caplog.clear()
  records_lib.filter_cell_types(kept, classes.DEFAULT_CELL_TYPES, where='d', every_type=False)
  assert not caplog.records


BUILD_IN_A_PROCESS = """
import sys
from configs import base
from wcsegnet_jax.data import tfds_builder
c = base.get_config()
c.data.raw_dir, c.data.tfds_dir, c.data.image_size = sys.argv[1], sys.argv[2], 64
builder = tfds_builder.prepare('jiangxi', c.data)
print(builder.data_dir, len(tfds_builder.data_source(builder, 'train')))
"""


def test_two_runs_building_the_same_data_at_once_both_get_it(tmp_path):
  """Two processes started together on a fresh tfds_dir: one builds while the other waits for
  it, and both read the same build (each removed the other's folder before)."""
  fixtures.make_wbc_raw(
    tmp_path / 'raw', n_per_type={1: 30, 2: 30, 3: 10, 4: 10, 5: 10}, size1=200, size2=40
  )
  command = [
    sys.executable,
    '-c',
    BUILD_IN_A_PROCESS,
    str(tmp_path / 'raw'),
    str(tmp_path / 'tfds'),
  ]
  runs = [
    subprocess.Popen(
      command, cwd=conftest.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for _ in range(2)
  ]
  results = [run.communicate(timeout=240) for run in runs]
  for run, (out, err) in zip(runs, results):
    assert run.returncode == 0, err[-3000:]
  assert results[0][0] == results[1][0] and results[0][0].split()[1] != '0'
  builds = [p for p in (tmp_path / 'tfds').rglob('*') if p.name.startswith('jiangxi-64-')]
  assert len(builds) == 1


def test_a_raw_dir_with_one_subset_points_to_data_datasets(tmp_path):
  root, _ = _small_raw(tmp_path)
  shutil.rmtree(root / 'Dataset 2')
  with pytest.raises(
    errors_lib.DataError,
    match=re.escape(
      'it holds only Dataset 1/: use that alone with --config.data.datasets="(\'jiangxi\',)"'
    ),
  ):
    records_lib.list_wbc_records(root, 'cellavision')


def test_no_data_and_no_network_is_one_line_within_seconds(tmp_path, monkeypatch):
  """No raw folder, no build and no route to the archive: where the data goes and where to
  get it, at once, instead of TFDS's minutes of retries and its traceback."""
  monkeypatch.delenv(records_lib.RAW_DIR_ENV, raising=False)
  # TEST-NET-1 (RFC 5737): routed nowhere, as on a machine without network.
  monkeypatch.setattr(tfds_builder, 'ARCHIVE_HOST', '192.0.2.1')
  c = conftest.data_config('', tmp_path / 'tfds')
  start = time.monotonic()
  with pytest.raises(errors_lib.DataError) as info:
    tfds_builder.prepare('jiangxi', c.data)
  assert time.monotonic() - start < tfds_builder.REACHABLE_TIMEOUT_S + 3
  message = str(info.value)
  assert '\n' not in message
  for part in (
    'config.data.raw_dir',
    records_lib.RAW_DIR_ENV,
    str(tmp_path / 'tfds'),
    'github.com/zxaoyou/segmentation_WBC',
    '"Dataset 1/"',
  ):
    assert part in message, part
  assert not (tmp_path / 'tfds').exists() or not list((tmp_path / 'tfds').rglob('*'))
