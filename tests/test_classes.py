"""Classes from config: the class table, label maps of every cell type (with and without the
cytoplasm), the metrics that follow from the table, and models whose classes differ."""

import csv
import json
import re

import numpy as np
import pytest
from pytest import approx

import conftest
import fixtures
from configs import base
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_lib
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import label_maps
from wcsegnet_jax.data import records as records_lib
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.model import metrics
from wcsegnet_jax.model import restore

FIVE = ('neutrophil', 'lymphocyte', 'monocyte', 'eosinophil', 'basophil')


# --- The table ------------------------------------------------------------------------------------


def test_the_papers_config_gives_the_papers_map():
  c = base.get_config()
  table = classes.table_of(c.data)
  assert table.names == ('background', 'neutrophil', 'basophil', 'lymphocyte')
  assert (table.num_classes, table.nucleus_ids, table.cytoplasm_id) == (4, (1, 2, 3), None)
  assert [table.type_id(t) for t in ('neutrophil', 'basophil', 'lymphocyte')] == [1, 2, 3]
  # The paper's figure colours: black, red, green, blue.
  np.testing.assert_array_equal(table.colors, [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])


@pytest.mark.parametrize(
  'cell_types', [FIVE, ('lymphocyte', 'basophil', 'neutrophil'), ('eosinophil',)]
)
@pytest.mark.parametrize('cytoplasm', [False, True])
def test_table_follows_the_configured_types_in_order(cell_types, cytoplasm):
  table = classes.class_table(cell_types, cytoplasm)
  n = len(cell_types)
  assert table.num_classes == 1 + n + cytoplasm
  assert table.names[0] == 'background' and table.names[1 : 1 + n] == cell_types
  assert table.nucleus_ids == tuple(range(1, n + 1))
  assert table.cytoplasm_id == (n + 1 if cytoplasm else None)
  if cytoplasm:
    assert table.names[table.cytoplasm_id] == 'cytoplasm'
  assert {t: table.type_id(t) for t in cell_types} == table.type_to_id
  assert [table.names[table.type_id(t)] for t in cell_types] == list(cell_types)
  colours = [tuple(c) for c in table.colors]
  assert len(set(colours)) == table.num_classes  # every class told apart
  assert all(colours[i] == classes.PALETTE[name] for i, name in enumerate(table.names))
  assert classes.table_from_names(table.names) == table


def test_a_type_outside_the_table_is_named():
  table = classes.class_table(('neutrophil', 'lymphocyte'))
  with pytest.raises(ValueError, match="'monocyte' has no class"):
    table.type_id('monocyte')
  with pytest.raises(config_lib.ConfigError, match=r"\['blast'\] not a cell type"):
    classes.class_table(('neutrophil', 'blast'))


def test_colorize_and_overlay_use_the_table():
  table = classes.class_table(FIVE, cytoplasm=True)
  label_map = np.arange(table.num_classes).reshape(1, -1)
  np.testing.assert_array_equal(table.colorize(label_map)[0], table.colors)
  image = np.full((1, table.num_classes, 3), 200, np.uint8)
  over = table.overlay(image, label_map, alpha=1.0)
  np.testing.assert_array_equal(over[0, 0], image[0, 0])  # background kept
  np.testing.assert_array_equal(over[0, 1:], table.colors[1:])


# --- Label maps from real (or generated) masks, every type ---------------------------------------


def _one_record_per_type(tmp_path_factory, table):
  """{cell type: record} from the real dataset when present (Jiangxi, then CellaVision), else
  from generated data with every type."""
  if (conftest.REAL_WBC_DIR / 'Dataset 1').is_dir():
    root, sources = conftest.REAL_WBC_DIR, ('jiangxi', 'cellavision')
  else:
    root = tmp_path_factory.mktemp('all_types')
    fixtures.make_wbc_raw(root, n_per_type={code: 1 for code in classes.CSV_CELL_TYPES}, size2=120)
    sources = ('jiangxi',)
  found = {}
  for source in sources:
    for record in records_lib.list_raw_records(source, root, table):
      found.setdefault(record.cell_type, record)
  return found


@pytest.mark.parametrize('cytoplasm', [False, True])
def test_label_maps_of_every_type_from_masks(tmp_path_factory, cytoplasm):
  table = classes.class_table(FIVE, cytoplasm)
  records = _one_record_per_type(tmp_path_factory, table)
  assert set(records) == set(FIVE)
  for cell_type, record in records.items():
    mask = label_maps.snap_mask_levels(
      image_files.read_mask(record.mask_path), record.mask_path, 40, 0.01
    )
    size = mask.shape[0]  # no resize: the label map must match the mask pixel for pixel
    ex = label_maps.load_example(record, table, size, 40, 0.01)
    want = np.zeros(mask.shape, np.uint8)
    want[mask == 255] = table.type_id(cell_type)
    if cytoplasm:
      want[mask == 128] = table.cytoplasm_id
    np.testing.assert_array_equal(ex['label_map'], want, err_msg=str(record.mask_path))
    assert ex['cell_type'] == table.type_id(cell_type)
    assert (ex['label_map'] == table.type_id(cell_type)).any()
    assert not cytoplasm or (ex['label_map'] == table.cytoplasm_id).any()


def test_a_mask_without_cytoplasm_is_named_when_the_cytoplasm_is_a_class(tmp_path):
  root = tmp_path / 'raw'
  manifest = fixtures.make_wbc_raw(root, n_per_type={1: 2}, size2=120)['jiangxi']
  bad = root / 'Dataset 1' / f'{manifest[0].file_id}.png'
  fixtures.write_gray(bad, np.where(manifest[0].mask == 128, 0, manifest[0].mask).astype(np.uint8))
  table = classes.class_table(('neutrophil',), cytoplasm=True)
  record = [r for r in records_lib.list_raw_records('jiangxi', root, table) if r.mask_path == bad][
    0
  ]
  with pytest.raises(errors.DataError, match=re.escape(str(bad)) + '.*no cytoplasm pixel'):
    label_maps.load_example(record, table, 120, 40, 0.01)
  # Without the cytoplasm class the same mask is fine.
  label_maps.load_example(record, classes.class_table(('neutrophil',)), 120, 40, 0.01)


def test_folder_label_maps_use_the_tables_ids_and_need_the_cytoplasm(tmp_path):
  table = classes.class_table(('lymphocyte', 'monocyte'), cytoplasm=True)
  folder = tmp_path / 'folder'
  (folder / 'images').mkdir(parents=True)
  (folder / 'masks').mkdir()
  rng = np.random.default_rng(0)
  for name, type_id, with_cytoplasm in (('a', 1, True), ('b', 2, True), ('c', 2, False)):
    mask = fixtures.cell_mask(rng, 64)
    fixtures.write_rgb(folder / 'images' / f'{name}.png', fixtures.cell_image(rng, mask))
    label_map = np.where(mask == 255, type_id, 0)
    if with_cytoplasm:
      label_map = np.where(mask == 128, table.cytoplasm_id, label_map)
    fixtures.write_gray(folder / 'masks' / f'{name}.png', label_map.astype(np.uint8))
  with pytest.raises(
    errors.DataError,
    match=r'c\.png: label-map mask without cytoplasm.*carry '
    r'only the nucleus',
  ):
    records_lib.list_folder_records(folder, table)
  (folder / 'images' / 'c.png').unlink()
  (folder / 'masks' / 'c.png').unlink()
  records = records_lib.list_folder_records(folder, table)
  assert [r.cell_type for r in records] == ['lymphocyte', 'monocyte']
  ex = label_maps.load_example(records[1], table, 64, 40, 0.01)
  assert set(np.unique(ex['label_map']).tolist()) == {0, 2, table.cytoplasm_id}


def test_builds_encode_the_tables_map_and_differ_by_type_order_and_cytoplasm(tmp_path):
  root = tmp_path / 'raw'
  manifest = fixtures.make_wbc_raw(root, n_per_type={1: 2, 2: 2, 3: 2}, size2=120)['jiangxi']
  masks = {f.file_id: f.mask for f in manifest}
  dirs = set()
  for cell_types, cytoplasm in (((FIVE[:3]), True), (FIVE[:3][::-1], True), (FIVE[:3], False)):
    c = conftest.data_config(
      root, tmp_path / 'tfds', cell_types=cell_types, cytoplasm=cytoplasm, test_fraction=0.0
    )
    table = classes.table_of(c.data)
    builder = tfds_builder.prepare('jiangxi', c.data)
    dirs.add(builder.data_dir)
    source = builder.as_data_source('train')
    types = {f.file_id: f.cell_type for f in manifest}
    for i in range(len(source)):
      ex = source[i]
      fid = tfds_builder.as_str(ex['file_id'])
      want = np.where(masks[fid] == 255, table.type_id(types[fid]), 0)
      if cytoplasm:
        want = np.where(masks[fid] == 128, table.cytoplasm_id, want)
      np.testing.assert_array_equal(ex['label_map'], want)
    with open(f'{builder.data_dir}/{tfds_builder.SPLIT_IDS_FILE}', newline='') as f:
      assert {r['file_id']: r['cell_type'] for r in csv.DictReader(f)} == types
  assert len(dirs) == 3  # no build is served for another class map


# --- Metrics of a table ---------------------------------------------------------------------------


def test_paper_metrics_count_the_cytoplasm_as_not_nucleus_and_add_whole_cell_scores():
  table = classes.class_table(('neutrophil', 'lymphocyte'), cytoplasm=True)  # 3 = cytoplasm
  labels = np.array([[0, 0, 3, 3, 1, 1, 2, 0]])
  preds = np.array([[0, 3, 3, 1, 1, 2, 0, 0]])
  cm = np.zeros((4, 4), np.int64)
  np.add.at(cm, (labels.ravel(), preds.ravel()), 1)
  m = metrics.paper_metrics(cm, table)
  # Nucleus = {1, 2} vs the rest: tp 2 (1->1, 1->2), fp 1 (3->1), fn 1 (2->0), tn 4.
  assert m['dice'] == approx(2 * 2 / (2 * 2 + 1 + 1))
  assert m['accuracy'] == approx(6 / 8)
  assert m['nucleus_iou'] == approx(2 / 4) and m['background_iou'] == approx(4 / 6)
  # Whole cell = {1, 2, 3} vs background: tp 4, fp 1 (0->3), fn 1 (2->0).
  assert m['cell_dice'] == approx(2 * 4 / (2 * 4 + 1 + 1))
  assert m['cell_iou'] == approx(4 / 6)
  assert 'cell_dice' not in metrics.paper_metrics(
    cm[:3, :3], classes.class_table(('neutrophil', 'lymphocyte'))
  )
  s = metrics.per_image_summary(cm[None], table=table)
  assert s['paper']['cell_dice']['mean'] == approx(m['cell_dice'])
  assert list(metrics.class_metrics(cm, table)['dice']) == list(table.names)


def test_votes_ignore_the_cytoplasm_and_cell_confusion_has_the_types():
  table = classes.class_table(FIVE, cytoplasm=True)
  pred = np.full((4, 4), table.cytoplasm_id)
  pred[0, :2] = 4
  pred[1, 0] = 2
  assert metrics.predicted_cell_type(pred, table=table) == (4, approx(2 / 3))
  assert metrics.predicted_cell_type(np.full((3, 3), table.cytoplasm_id), table=table) == (0, 0)
  votes = np.bincount(pred.ravel(), minlength=table.num_classes)
  assert int(metrics.voted_cell_type(votes, table)) == 4
  cell_cm = metrics.cell_confusion([1, 5, 4], [1, 4, 0], table)
  assert cell_cm.shape == (6, 6)
  cells = metrics.cell_metrics(cell_cm, table)
  assert list(cells['recall']) == ['background', *FIVE]
  assert cells['recall']['eosinophil'] == 0.0 and cells['recall']['neutrophil'] == 1.0


def test_a_matrix_of_another_size_than_the_table_is_an_error():
  with pytest.raises(ValueError, match='7 classes in the confusion matrix but 4'):
    metrics.paper_metrics(np.eye(7, dtype=int))
  with pytest.raises(ValueError, match='4 classes in the confusion matrix but 7'):
    metrics.class_metrics(np.eye(4, dtype=int), classes.class_table(FIVE, True))


# --- Models record their classes ------------------------------------------------------------------


def test_evaluating_a_model_with_other_classes_is_refused(tmp_path):
  trained = base.get_config()
  trained.data.cell_types, trained.data.cytoplasm = FIVE, True
  (tmp_path / run_files.CONFIG_FILE).write_text(trained.to_json())
  restore.check_eval_config(tmp_path, trained)  # its own classes: fine
  paper = base.get_config()
  with pytest.raises(errors.CheckpointError) as e:
    restore.check_eval_config(tmp_path, paper)
  message = str(e.value)
  assert classes.table_of(trained.data).describe() in message
  assert classes.table_of(paper.data).describe() in message
  saved = json.loads(trained.to_json())
  saved['data']['cell_types'] = list(FIVE[::-1])  # the same types in another order
  (tmp_path / run_files.CONFIG_FILE).write_text(json.dumps(saved))
  with pytest.raises(errors.CheckpointError, match='1 basophil'):
    restore.check_eval_config(tmp_path, trained)
