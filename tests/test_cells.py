"""Tests of wcsegnet_jax.cells (label maps into cells), fields (tiling) and mosaics (scoring).

Synthetic maps whose cells are known; mosaics of generated crops, and of the real crops' true
masks where ../shared has them (no model: the cell rules on real nucleus shapes).
"""

import cv2
import numpy as np
import pytest

import conftest
import fixtures
from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.dev import mosaics
from wcsegnet_jax.inference import fields

NUCLEUS_IDS = (1, 2, 3)
RULES = cells.CellRules()  # merge gap 14, split radius 16, min nucleus 280 (training scale)


def disk_map(shape, disks) -> np.ndarray:
  """A label map with disks (x, y, radius, class id) drawn in order."""
  label_map = np.zeros(shape, np.uint8)
  for x, y, r, class_id in disks:
    cv2.circle(label_map, (x, y), r, int(class_id), thickness=-1)
  return label_map


def find(label_map, probs=None, cytoplasm_id=None, rules=RULES):
  """The cells of a map of the paper's classes (NUCLEUS_IDS), with cytoplasm `cytoplasm_id`."""
  table = classes.class_table(classes.DEFAULT_CELL_TYPES, cytoplasm=cytoplasm_id is not None)
  assert table.nucleus_ids == NUCLEUS_IDS and table.cytoplasm_id == cytoplasm_id
  return cells.find_cells(label_map, probs, table, rules)


def test_two_touching_round_nuclei_are_two_cells():
  # Radius 22 nuclei touching along a short chord: each has a core >= 16 px deep.
  label_map = disk_map((80, 140), [(40, 40, 22, 3), (82, 40, 22, 1)])
  assert len(np.unique(cv2.connectedComponents((label_map > 0).astype(np.uint8))[1])) == 2
  found, labels = find(label_map)
  assert len(found) == 2
  left, right = sorted(found, key=lambda c: c.centre[0])
  assert (left.class_id, right.class_id) == (3, 1)
  assert left.nucleus_area_px + right.nucleus_area_px == int((label_map > 0).sum())
  assert left.bbox[2] <= right.bbox[0] + 2 and left.centre[0] < 55 < right.centre[0]
  assert set(np.unique(labels)) == {0, 1, 2}


def test_a_lobed_nucleus_is_one_cell():
  # Three lobes, 10 px apart, each thinner than a core: one neutrophil.
  label_map = disk_map((60, 120), [(25, 30, 9, 1), (53, 30, 9, 1), (81, 30, 9, 1)])
  found, _ = find(label_map)
  assert len(found) == 1
  (cell,) = found
  assert cell.nucleus['nucleus_parts'] == 3 and cell.class_id == 1
  assert cell.nucleus_area_px == int((label_map > 0).sum())
  assert cell.bbox == (16, 21, 91, 40)
  # Farther apart than the merge gap, they are three cells (each above the speck size).
  apart = disk_map((60, 160), [(20, 30, 10, 1), (70, 30, 10, 1), (120, 30, 10, 1)])
  assert len(find(apart)[0]) == 3


def test_rules_scale_with_the_map():
  # The lobed nucleus at twice the training scale: gaps of 20 px, lobes of 804 px.
  label_map = disk_map((120, 240), [(50, 60, 18, 1), (106, 60, 18, 1), (162, 60, 18, 1)])
  assert len(find(label_map)[0]) == 3
  assert len(find(label_map, rules=RULES.scaled(2.0))[0]) == 1
  scaled = RULES.scaled(0.5)
  assert (scaled.merge_gap_px, scaled.min_nucleus_px) == (7.0, 70.0)
  assert scaled.max_cytoplasm_px == RULES.max_cytoplasm_px / 2


def test_a_cell_cut_by_the_border_is_flagged():
  label_map = disk_map((100, 100), [(5, 50, 15, 2), (60, 50, 15, 3)])
  found, _ = find(label_map)
  by_type = {c.class_id: c for c in found}
  assert by_type[2].touches_border and by_type[2].bbox[0] == 0
  assert not by_type[3].touches_border


def test_no_cell_and_specks_give_no_rows():
  found, labels = find(np.zeros((50, 50), np.uint8))
  assert found == [] and labels.shape == (50, 50) and not labels.any()
  speck = disk_map((50, 50), [(25, 25, 4, 1)])  # ~50 px < 280
  found, labels = find(speck)
  assert found == [] and not labels.any()
  assert len(find(speck, rules=cells.CellRules(min_nucleus_px=10))[0]) == 1


def test_type_vote_and_confidence():
  label_map = disk_map((60, 60), [(30, 30, 15, 1), (30, 30, 6, 3)])  # mostly 1, a 3 centre
  probs = np.zeros((60, 60, 4), np.float32)
  probs[..., 0] = 1.0
  nucleus = label_map > 0
  probs[nucleus] = [0.0, 0.7, 0.0, 0.3]
  (cell,), _ = find(label_map, probs)
  assert cell.class_id == 1
  assert cell.confidence == pytest.approx(0.7)
  (cell,), _ = find(label_map)  # without probabilities: the vote share
  assert cell.confidence == pytest.approx((label_map == 1).sum() / nucleus.sum())
  tie = np.zeros((20, 40), np.uint8)
  tie[5:15, 10:20], tie[5:15, 20:30] = 3, 2
  assert find(tie, rules=cells.CellRules(min_nucleus_px=1))[0][0].class_id == 2


def test_with_cytoplasm_cells_are_nucleus_and_cytoplasm_regions():
  cyto = 4
  # One cell whose two lobes are 30 px apart (beyond the merge gap) in one cytoplasm, and two
  # touching cells each with a thick nucleus.
  label_map = disk_map(
    (100, 240),
    [
      (50, 50, 40, cyto),
      (30, 50, 10, 1),
      (70, 50, 10, 1),
      (145, 50, 30, cyto),
      (200, 50, 30, cyto),
      (145, 50, 18, 3),
      (200, 50, 18, 2),
    ],
  )
  found, labels = find(label_map, cytoplasm_id=cyto)
  assert len(found) == 3
  lobed, left, right = sorted(found, key=lambda c: c.centre[0])
  assert lobed.nucleus['nucleus_parts'] == 2 and lobed.class_id == 1
  assert lobed.cell_area_px == int(((label_map > 0)[:, :95]).sum())
  cytoplasm = lobed.cell_area_px - lobed.nucleus_area_px
  assert lobed.nc_ratio == pytest.approx(lobed.nucleus_area_px / cytoplasm)
  assert (left.class_id, right.class_id) == (3, 2)
  assert left.cell_area_px + right.cell_area_px == int((label_map[:, 100:] > 0).sum())
  assert (labels > 0).sum() == (label_map > 0).sum()
  # Without a cytoplasm class there is no cell area or N:C ratio.
  assert all(c.cell_area_px is None and c.nc_ratio is None for c in find(label_map)[0])


def test_cytoplasm_beyond_a_cells_reach_is_left_out():
  cyto = 4
  # A cell (nucleus radius 15, cytoplasm radius 30) whose cytoplasm runs on as a 6 px band to
  # x = 230, as cytoplasm-coloured pixels over a row of red cells do in a smear field.
  label_map = disk_map((80, 240), [(40, 40, 30, cyto), (40, 40, 15, 2)])
  label_map[37:43, 40:230] = np.where(label_map[37:43, 40:230] == 2, 2, cyto)
  ((cell,), labels) = find(label_map, cytoplasm_id=cyto)
  reach = RULES.max_cytoplasm_px
  # The band is cut where it leaves the reach (measured from the nucleus edge at x = 55).
  assert cell.bbox[2] == pytest.approx(40 + 15 + reach + 1, abs=2)
  assert (labels[37:43, 12 : int(40 + 15 + reach)] > 0).all()
  # The cell's own round cytoplasm is whole, and the box shrinks with the rule.
  assert (labels[disk_map((80, 240), [(40, 40, 30, 1)]) > 0] > 0).all()
  assert cell.cell_area_px < int((label_map > 0).sum())
  (small,), _ = find(label_map, cytoplasm_id=cyto, rules=RULES.scaled(0.5))
  assert small.bbox[2] == pytest.approx(40 + 15 + reach / 2 + 1, abs=2)
  assert small.bbox[:2] == (10, 10)


def test_differential_counts_and_percentages():
  rows = cells.differential(
    [1, 3, 3, 1, 1, 3, 3, 3], ['neutrophil', 'basophil', 'lymphocyte'], (1, 2, 3)
  )
  assert [(r['cell_type'], r['count']) for r in rows] == [
    ('neutrophil', 3),
    ('basophil', 0),
    ('lymphocyte', 5),
    ('total', 8),
  ]
  assert [r['percent'] for r in rows] == pytest.approx([37.5, 0.0, 62.5, 100.0])
  empty = cells.differential([], ['neutrophil'], (1,))
  assert [(r['count'], r['percent']) for r in empty] == [(0, 0.0), (0, 0.0)]


@pytest.mark.parametrize(
  'length,tile,margin', [(64, 64, 16), (65, 64, 16), (250, 64, 16), (170, 64, 0), (1000, 120, 30)]
)
def test_tile_plan_partitions_with_context(length, tile, margin):
  plan = fields.tile_plan(length, tile, margin)
  owned = np.concatenate([np.arange(a, b) for _, a, b in plan])
  np.testing.assert_array_equal(owned, np.arange(length))  # each pixel once, in order
  for start, own_from, own_to in plan:
    assert start <= own_from < own_to <= start + tile
    assert own_from == 0 or own_from - start >= margin
    assert own_to == length or start + tile - own_to >= margin


def _blur_model(batch: np.ndarray) -> np.ndarray:
  """A stand-in model whose output at a pixel sees 2 pixels around it (5x5 box filter)."""
  return np.stack(
    [cv2.blur(x.astype(np.float32) / 255, (5, 5), borderType=cv2.BORDER_REFLECT_101) for x in batch]
  )


def test_tiles_stitch_to_the_whole_image_result():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (250, 170, 3), dtype=np.uint8)
  calls = []
  model = lambda b: calls.append(b.shape) or _blur_model(b)
  stitched = fields.segment_field(model, image, tile=64, margin=16, batch_size=4)
  np.testing.assert_allclose(stitched, _blur_model(image[None])[0], atol=1e-6)
  assert set(calls) == {(4, 64, 64, 3)} and len(calls) > 1  # full batches only
  # Smaller than a tile: mirrored out and cropped back; a per-pixel model is unchanged.
  small = image[:40, :50]
  out = fields.segment_field(lambda b: b.astype(np.float32) / 255, small, tile=64, batch_size=2)
  np.testing.assert_allclose(out, small / 255, atol=1e-6)


def test_resize_field():
  image = np.zeros((100, 300, 3), np.uint8)
  assert fields.resize_field(image, 0.4).shape == (40, 120, 3)
  assert fields.resize_field(image, 1.0) is image
  assert fields.resize_field(image, 2.5).shape == (250, 750, 3)


def _generated_crops(n: int, size: int = 120) -> list[mosaics.Crop]:
  rng = np.random.default_rng(5)
  crops = []
  for k in range(n):
    mask = np.zeros((size, size), np.uint8)  # a round cell well inside the crop
    cv2.circle(mask, (size // 2, size // 2), size // 3, 128, thickness=-1)
    cv2.circle(mask, (size // 2 + int(rng.integers(-5, 6)), size // 2), size // 5, 255, -1)
    crops.append(
      mosaics.Crop(
        f'gen/{k}',
        fixtures.cell_image(rng, mask),
        mask == 255,
        ('neutrophil', 'lymphocyte')[k % 2],
        mask > 0,
      )
    )
  return crops


def test_cytoplasm_models_are_scored_on_whole_cell_boxes():
  """A model with a cytoplasm class reports whole-cell boxes (rows with a cell area): they
  match the true cells' whole-cell boxes, where against the nucleus boxes (IoU ~0.36 for these
  cells' radii, 1/5 and 1/3 of the crop) they would be near the threshold."""
  crops = _generated_crops(4)
  _, truth = mosaics.build_mosaic(crops, columns=2, gap=20)
  rows = [
    {
      'file': 'm.png',
      **dict(zip(('x0', 'y0', 'x1', 'y1'), t['cell_bbox'])),
      'predicted_type': t['cell_type'],
      'cell_area_px': '900',
    }
    for t in truth
  ]
  result = mosaics.score([{'file': 'm.png', 'cells': truth}], rows)
  assert result['boxes'] == 'whole cell' and result['matched_cells'] == 4
  assert mosaics._iou(truth[0]['bbox'], truth[0]['cell_bbox']) < 0.4
  for row in rows:  # the same boxes from a nucleus-only model would be scored on nuclei
    row['cell_area_px'] = ''
  assert mosaics.score([{'file': 'm.png', 'cells': truth}], rows)['boxes'] == 'nucleus'


def _true_label_map(shape, truth, crops, type_ids) -> np.ndarray:
  """The mosaic's true label map: each crop's nucleus at its place, in its type's class."""
  label_map = np.zeros(shape, np.uint8)
  for cell, crop in zip(truth, crops):
    ys, xs = np.nonzero(crop.nucleus)
    dx, dy = cell['bbox'][0] - xs.min(), cell['bbox'][1] - ys.min()
    label_map[ys + dy, xs + dx] = type_ids[crop.cell_type]
  return label_map


def _cell_rows(file, found, names):
  return [
    {
      'file': file,
      'x0': c.bbox[0],
      'y0': c.bbox[1],
      'x1': c.bbox[2],
      'y1': c.bbox[3],
      'predicted_type': names[c.class_id],
    }
    for c in found
  ]


def test_mosaic_truth_and_scoring(tmp_path):
  crops = _generated_crops(5)
  image, truth = mosaics.build_mosaic(crops, columns=2, gap=20)
  assert image.shape == (20 + 3 * 140, 20 + 2 * 140, 3)
  names = ('background', 'neutrophil', 'basophil', 'lymphocyte')
  label_map = _true_label_map(image.shape[:2], truth, crops, {'neutrophil': 1, 'lymphocyte': 3})
  for cell, crop in zip(truth, crops):  # the crop's pixels are where its truth box says
    x0, y0, x1, y1 = cell['bbox']
    assert (label_map[y0:y1, x0:x1] > 0).sum() == crop.nucleus.sum()
  found, _ = find(label_map)
  result = mosaics.score([{'file': 'm.png', 'cells': truth}], _cell_rows('/x/m.png', found, names))
  assert (result['true_cells'], result['predicted_cells'], result['matched_cells']) == (5, 5, 5)
  assert result['exact_count_fraction'] == 1.0 and result['type_accuracy_of_matched'] == 1.0
  # One cell missed, one wrongly typed, one spurious far from every true cell.
  rows = _cell_rows('m.png', found, names)[1:]
  rows[0]['predicted_type'] = 'basophil'
  rows.append({'file': 'm.png', 'x0': 0, 'y0': 0, 'x1': 8, 'y1': 8, 'predicted_type': 'basophil'})
  result = mosaics.score([{'file': 'm.png', 'cells': truth}], rows)
  assert (result['predicted_cells'], result['matched_cells']) == (5, 4)
  assert result['recall'] == pytest.approx(4 / 5) and result['precision'] == pytest.approx(4 / 5)
  assert result['type_accuracy_of_matched'] == pytest.approx(3 / 4)
  assert result['exact_count_fraction'] == 1.0 and result['mean_abs_count_error'] == 0.0
  written = mosaics.write_mosaics(
    crops, tmp_path, n_mosaics=2, per_mosaic=3, columns=3, gap=10, seed=0
  )
  assert mosaics.read_truth(tmp_path) == written
  assert cv2.imread(str(tmp_path / 'mosaic_01.png')).shape[:2] == tuple(written[1]['size'])
  with pytest.raises(errors.DataError, match='cannot fill'):
    mosaics.write_mosaics(crops, tmp_path, 1, 6, 3, 10, 0)


@pytest.mark.skipif(not conftest.REAL_WBC_DIR.is_dir(), reason='no real WBC data in ../shared')
@pytest.mark.parametrize('subset,scale', [('jiangxi', 1.0), ('cellavision', 0.4)])
def test_real_crops_true_masks_in_mosaics_are_one_cell_each(subset, scale):
  """The cell rules on real nucleus shapes: every crop's true nucleus, lobed neutrophils too,
  is one cell of its type in a mosaic at the crops' own scale (rules scaled by 1 / scale)."""
  type_ids = {'neutrophil': 1, 'basophil': 2, 'lymphocyte': 3}
  crops = mosaics.load_crops(conftest.REAL_WBC_DIR, subset, cell_types=tuple(type_ids))
  rng = np.random.default_rng(0)
  picked = [crops[i] for i in rng.choice(len(crops), 12, replace=False)]
  image, truth = mosaics.build_mosaic(picked, columns=4, gap=picked[0].image.shape[0] // 6)
  label_map = _true_label_map(image.shape[:2], truth, picked, type_ids)
  found, _ = find(label_map, rules=RULES.scaled(1 / scale))
  names = ('background', 'neutrophil', 'basophil', 'lymphocyte')
  result = mosaics.score([{'file': 'm.png', 'cells': truth}], _cell_rows('m.png', found, names))
  assert result['predicted_cells'] == result['matched_cells'] == 12
  assert result['type_accuracy_of_matched'] == 1.0


@pytest.mark.slow
@pytest.mark.skipif(not conftest.REAL_WBC_DIR.is_dir(), reason='no real WBC data in ../shared')
def test_shipped_model_counts_the_cells_of_a_real_mosaic(tmp_path):
  """The shipped model on a field of 4 real Jiangxi test crops (--field_scale=1.0): one cell
  per crop, where the crop is, of the crop's type (on these crops it types every one)."""
  from wcsegnet_jax.inference import output_folder  # pylint: disable=g-import-not-at-top
  from wcsegnet_jax.inference import prediction  # pylint: disable=g-import-not-at-top
  from wcsegnet_jax.model import shipped_model  # pylint: disable=g-import-not-at-top

  ids = shipped_model.load_info()['images']['jiangxi']['test']
  crops = mosaics.load_crops(conftest.REAL_WBC_DIR, 'jiangxi', ids[:4])
  truth = mosaics.write_mosaics(
    crops, tmp_path / 'mosaics', n_mosaics=1, per_mosaic=4, columns=2, gap=20, seed=0
  )
  summary = prediction.run(
    [str(tmp_path / 'mosaics')], prediction.PredictOptions(output=tmp_path / 'out', field_scale=1.0)
  )
  assert len(summary.done) == 1 and not summary.no_cells
  result = mosaics.score(truth, mosaics.read_cells_csv(tmp_path / 'out' / output_folder.CELLS_FILE))
  assert result['predicted_cells'] == result['matched_cells'] == 4
  assert result['type_accuracy_of_matched'] == 1.0


def test_border_cut_small_and_misshapen_objects_are_not_counted_and_say_why():
  """At the training scale: a whole round nucleus counts; one cut by the border, a
  blob of 197 px (a nucleus has >= ~400) and a thin sliver do not."""
  label_map = disk_map((160, 240), [(40, 100, 20, 1), (230, 100, 20, 3), (120, 130, 8, 2)])
  # A curved sliver, as the rim of a cell segmented as nucleus: ~400 px.
  cv2.ellipse(label_map, (120, 80), (90, 60), 0, 220, 320, 1, thickness=3)
  # The default speck size (280) drops the blob; the counting rule acts below it.
  assert len(find(label_map, rules=cells.CellRules(merge_gap_px=4))[0]) == 3
  found, _ = find(label_map, rules=cells.CellRules(merge_gap_px=4, min_nucleus_px=150))
  by_place = {(round(c.centre[0] / 20), round(c.centre[1] / 20)): c for c in found}
  assert len(found) == 4, [c.centre for c in found]
  whole, cut = by_place[(2, 5)], by_place[(11, 5)]
  blob = by_place[(6, 6)]
  (sliver,) = [c for c in found if c not in (whole, cut, blob)]
  assert cells.not_counted_reasons(whole, RULES) == ''
  assert cells.not_counted_reasons(cut, RULES) == 'cut by the image border'
  assert blob.nucleus_area_px < RULES.min_counted_nucleus_px
  assert cells.not_counted_reasons(blob, RULES) == (
    f'nucleus {blob.nucleus_area_px} px < {RULES.min_counted_nucleus_px:.0f}'
  )
  assert sliver.nucleus_area_px > RULES.min_counted_nucleus_px
  assert cells.not_counted_reasons(sliver, RULES).startswith('circularity 0.')
  # Twice the pixels per training pixel: the same blob, four times the area, is enough.
  doubled = cells.CellRules().scaled(2.0)
  assert doubled.min_counted_nucleus_px == 4 * RULES.min_counted_nucleus_px
  assert doubled.min_circularity == RULES.min_circularity


def test_counting_thresholds_keep_every_true_nucleus_of_the_generated_crops():
  """The generated crops' nuclei (disks of radius >= 10 at 120x120) are all countable."""
  rng = np.random.default_rng(3)
  for _ in range(20):
    mask = fixtures.cell_mask(rng, 120)
    found, _ = find(np.where(mask == 255, 1, 0).astype(np.uint8))
    assert [cells.not_counted_reasons(c, RULES) for c in found] == ['']
