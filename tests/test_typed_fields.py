"""The typed-fields layout (fields/ + truth.csv): what it reads, and one line for each mistake."""

import pathlib

import numpy as np
import pytest

import fixtures
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import typed_fields

REAL_FIELDS = (
  pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'datasets' / ('bccd_fields')
)


def make_fields_folder(
  root: pathlib.Path, rows: list[str], images=('a.jpg', 'b.png'), size=(48, 64)
) -> pathlib.Path:
  """A typed-fields folder with blank fields of `size` (h, w) and truth.csv of `rows`."""
  (root / 'fields').mkdir(parents=True)
  for name in images:
    fixtures.write_rgb(root / 'fields' / name, np.full(size + (3,), 200, np.uint8))
  (root / 'truth.csv').write_text('\n'.join(['file,type,xmin,ymin,xmax,ymax', *rows]) + '\n')
  return root


def test_reads_every_field_with_its_typed_cells(tmp_path):
  folder = make_fields_folder(
    tmp_path,
    ['a.jpg,Neutrophil,1,2,30,40', 'b.png,monocyte,0,0,64,48', 'a.jpg,eosinophil,40,5,60,20'],
  )
  fields = typed_fields.read_typed_fields(folder)
  assert [f.path.name for f in fields] == ['a.jpg', 'b.png']
  assert [(c.cell_type, c.box) for c in fields[0].cells] == [
    ('neutrophil', (1, 2, 30, 40)),
    ('eosinophil', (40, 5, 60, 20)),
  ]
  cell = fields[0].cells[0]
  assert cell.holds(1, 2) and cell.holds(29.9, 39.9) and not cell.holds(30, 10)


@pytest.mark.parametrize(
  'rows,images,message',
  [
    (
      ['a.jpg,neutrophil,1,1,5,5', 'a.jpg,neutrophil,10,10,70,40'],
      ('a.jpg',),
      r'line 3: a\.jpg: the box \(10, 10, 70, 40\) lies '
      r'outside its 64x48 image',
    ),
    (['a.jpg,platelet,1,1,5,5'], ('a.jpg',), r"line 2: unknown type 'platelet'"),
    (['a.jpg,neutrophil,1,1,5,5'], ('a.jpg', 'b.png'), r'b\.png: a field without a row'),
    (
      ['a.jpg,neutrophil,1,1,5,5', 'c.jpg,lymphocyte,1,1,5,5'],
      ('a.jpg',),
      r'line 3: c\.jpg is not in',
    ),
    (['a.jpg,neutrophil,1,1,x,5'], ('a.jpg',), r'line 2: the box .* is not four numbers'),
    (['a.jpg,neutrophil,1,1,5,5', '', 'a.jpg,neutrophil,1,1,5,99'], ('a.jpg',), r'line 4: a\.jpg'),
    (['a.jpg,neutrophil,5,1,5,5'], ('a.jpg',), r'line 2: empty box'),
    ([], ('a.jpg',), r'truth\.csv has no rows'),
  ],
)
def test_each_mistake_is_one_line_naming_the_file(tmp_path, rows, images, message):
  folder = make_fields_folder(tmp_path, rows, images)
  with pytest.raises(errors.DataError, match=message) as e:
    typed_fields.read_typed_fields(folder)
  assert '\n' not in str(e.value)


def test_a_folder_in_another_layout_is_named_with_the_expected_one(tmp_path):
  (tmp_path / 'images').mkdir()
  with pytest.raises(errors.DataError, match=r'no fields/; a typed-fields folder holds fields/'):
    typed_fields.read_typed_fields(tmp_path)
  (tmp_path / 'fields').mkdir()
  with pytest.raises(errors.DataError, match=r'no truth\.csv'):
    typed_fields.read_typed_fields(tmp_path)
  (tmp_path / 'truth.csv').write_text('name,kind\nx,y\n')
  with pytest.raises(errors.DataError, match=r'no column file, type, xmin'):
    typed_fields.read_typed_fields(tmp_path)
  (tmp_path / 'truth.csv').write_text('')
  with pytest.raises(errors.DataError, match=r'truth\.csv: empty \(it needs a header'):
    typed_fields.read_typed_fields(tmp_path)


@pytest.mark.skipif(not REAL_FIELDS.is_dir(), reason='no ../shared/datasets/bccd_fields here')
def test_the_bccd_fields_read_cleanly():
  fields = typed_fields.read_typed_fields(REAL_FIELDS, check_images=False)
  assert len(fields) >= 10 and all(len(f.cells) == 1 for f in fields)
  assert {c.cell_type for f in fields for c in f.cells} <= set(typed_fields.classes.ALL_CELL_TYPES)
