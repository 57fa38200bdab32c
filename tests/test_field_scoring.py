"""Scoring found and typed cells against typed boxes: matching rules and the summary's figures."""

import pathlib

import numpy as np

from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import classes
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.evaluation import field_scoring

TABLE = classes.class_table(
  ('neutrophil', 'lymphocyte', 'monocyte', 'eosinophil', 'basophil'), cytoplasm=True
)


def cell(box, type_name, nucleus_px=500):
  x0, y0, x1, y1 = box
  return cells.Cell(
    bbox=box,
    centre=((x0 + x1) / 2, (y0 + y1) / 2),
    touches_border=False,
    class_id=TABLE.type_id(type_name),
    confidence=0.9,
    nucleus_area_px=nucleus_px,
    cell_area_px=None,
    nc_ratio=None,
    nucleus={},
  )


def field(*typed):
  return typed_fields.TypedField(
    pathlib.Path('f.jpg'), tuple(typed_fields.TypedCell(t, box) for t, box in typed)
  )


def test_a_cell_is_found_by_its_box_centre_and_typed_by_its_largest_match():
  truth = field(('eosinophil', (100, 100, 200, 200)))
  found = [
    cell((90, 90, 150, 150), 'neutrophil', 300),  # centre (120, 120): inside
    cell((140, 140, 210, 210), 'eosinophil', 900),  # centre (175, 175): inside, larger
    cell((0, 0, 40, 40), 'lymphocyte'),  # a false cell
    cell((150, 180, 260, 260), 'monocyte'),
  ]  # centre (205, 220): outside
  outcome = field_scoring.match_field(truth, found, TABLE.names)
  assert outcome.matched_types == ['eosinophil']
  assert outcome.false_cells == 2 and outcome.extra_in_box == 1 and outcome.predicted_cells == 4


def test_summary_counts_found_exactly_one_false_cells_and_types():
  outcomes = [
    field_scoring.match_field(
      field(('neutrophil', (0, 0, 50, 50))), [cell((10, 10, 40, 40), 'neutrophil')], TABLE.names
    ),
    field_scoring.match_field(
      field(('neutrophil', (0, 0, 50, 50))),
      [cell((10, 10, 40, 40), 'monocyte'), cell((60, 60, 90, 90), 'lymphocyte')],
      TABLE.names,
    ),
    field_scoring.match_field(field(('lymphocyte', (0, 0, 50, 50))), [], TABLE.names),
  ]
  s = field_scoring.summarize(outcomes, TABLE.cell_types)
  assert (s['fields'], s['cells']) == (3, 3)
  assert np.isclose(s['found'], 2 / 3) and np.isclose(s['exactly_one'], 1 / 3)
  assert np.isclose(s['false_cells_per_field'], 1 / 3)
  assert np.isclose(s['type_right'], 1 / 3) and np.isclose(s['type_right_found'], 1 / 2)
  assert s['confusion']['neutrophil'] == {
    **{t: 0 for t in TABLE.cell_types},
    'neutrophil': 1,
    'monocyte': 1,
    'missed': 0,
  }
  assert s['confusion']['lymphocyte']['missed'] == 1 and s['type_recall']['lymphocyte'] == 0
  text = field_scoring.markdown(s, 'title')
  assert '| 0.667 | 0.333 | 0.333 | 0.333 | 0.500 |' in text
  assert '| neutrophil | 1 | 0 | 1 | 0 | 0 | 0 | 0.500 |' in text


def test_boxes_found_at_the_training_scale_map_back_to_the_field():
  """A field segmented at scale 0.5: a nucleus found at (20..40, 10..30) of the scaled map lies
  at (40..80, 20..60) of the field."""
  probs = np.zeros((50, 60, TABLE.num_classes), np.float32)
  probs[..., 0] = 1
  probs[10:30, 20:40] = 0
  probs[10:30, 20:40, TABLE.type_id('lymphocyte')] = 1
  found = field_scoring.cells_at_field_scale(probs, TABLE, cells.CellRules(), 'argmax', 0.5)
  assert [(c.bbox, TABLE.names[c.class_id]) for c in found] == [((40, 20, 80, 60), 'lymphocyte')]


def test_false_cells_a_differential_counts_are_told_apart():
  plausible = {'area_px': 600, 'circularity': 0.8, 'solidity': 0.9}
  sliver = {'area_px': 600, 'circularity': 0.03, 'solidity': 0.9}
  found = [
    cell((10, 10, 40, 40), 'neutrophil'),  # the true cell
    cell((60, 60, 90, 90), 'lymphocyte'),  # a false cell a differential counts
    cell((100, 60, 130, 90), 'lymphocyte'),  # a false sliver: not counted
    cell((0, 60, 30, 90), 'lymphocyte'),  # a false cell cut by the border: not counted
  ]
  for c, m in zip(found, (plausible, plausible, sliver, plausible)):
    c.nucleus = m
  found[3].touches_border = True
  truth = field(('neutrophil', (0, 0, 50, 50)))
  outcome = field_scoring.match_field(truth, found, TABLE.names, rules=cells.CellRules())
  assert outcome.false_cells == 3 and outcome.false_counted == 1
  s = field_scoring.summarize([outcome], TABLE.cell_types)
  assert s['false_counted_per_field'] == 1.0
  unjudged = field_scoring.match_field(truth, found, TABLE.names)
  assert field_scoring.summarize([unjudged], TABLE.cell_types)['false_counted_per_field'] is None
