"""A lab's typed cells on whole smear fields: `fields/` images and `truth.csv` (no masks).

The layout (that of ../shared/datasets/bccd_fields, what a lab typically holds):

  DIR/fields/<name>.jpg     whole fields, any size (.jpg, .png, .bmp, .tif)
  DIR/truth.csv             file,type,xmin,ymin,xmax,ymax: one row per typed white cell, its box
                            in pixels of its field (x from the left, y from the top; max exclusive)

A field may hold several typed cells (several rows). Every problem is a `DataError` naming the
file and the row: a box outside its image, an unknown type, a field without a row, a row
without a field, a folder not in this layout.
"""

import csv
import dataclasses
import pathlib

import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import image_files

FIELDS_SUBDIR = 'fields'
TRUTH_FILE = 'truth.csv'
TRUTH_COLUMNS = ('file', 'type', 'xmin', 'ymin', 'xmax', 'ymax')


@dataclasses.dataclass(frozen=True)
class TypedCell:
  """One white cell a lab typed and boxed: box (x0, y0, x1, y1), x1 and y1 exclusive."""

  cell_type: str
  box: tuple[int, int, int, int]

  def holds(self, x: float, y: float) -> bool:
    x0, y0, x1, y1 = self.box
    return x0 <= x < x1 and y0 <= y < y1


@dataclasses.dataclass(frozen=True)
class TypedField:
  """A field and the typed cells in it."""

  path: pathlib.Path
  cells: tuple[TypedCell, ...]


def _layout_error(folder: pathlib.Path, what: str) -> errors.DataError:
  return errors.DataError(
    f'{folder}: {what}; a typed-fields folder holds {FIELDS_SUBDIR}/ (the images) and '
    f'{TRUTH_FILE} with the columns {",".join(TRUTH_COLUMNS)}'
  )


def _read_rows(truth: pathlib.Path) -> list[tuple[int, dict]]:
  """(line number, row) of each row of truth.csv (the csv reader's count: blank lines and
  quoted line breaks included), its keys stripped and lower-cased."""
  try:
    with truth.open(newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      if reader.fieldnames is None:
        raise errors.DataError(
          f'{truth}: empty (it needs a header, {",".join(TRUTH_COLUMNS)}, and a row per typed cell)'
        )
      header = [h.strip().lower() for h in reader.fieldnames]
      missing = [c for c in TRUTH_COLUMNS if c not in header]
      if missing:
        raise errors.DataError(
          f'{truth}: no column {", ".join(missing)} (the header must name '
          f'{",".join(TRUTH_COLUMNS)})'
        )
      return [
        (reader.line_num, {k.strip().lower(): (v or '').strip() for k, v in row.items() if k})
        for row in reader
      ]
  except (UnicodeDecodeError, csv.Error) as e:
    raise errors.DataError(f'{truth}: not a readable CSV ({e})') from None


def _typed_cell(row: dict, where: str, cell_types: tuple[str, ...]) -> TypedCell:
  cell_type = row['type'].lower()
  if cell_type not in cell_types:
    raise errors.DataError(
      f'{where}: unknown type {row["type"]!r}; expected one of {", ".join(cell_types)}'
    )
  try:
    box = tuple(int(round(float(row[k]))) for k in TRUTH_COLUMNS[2:])
  except ValueError:
    raise errors.DataError(
      f'{where}: the box {[row[k] for k in TRUTH_COLUMNS[2:]]} is not four numbers'
    ) from None
  if not (box[0] < box[2] and box[1] < box[3]):
    raise errors.DataError(f'{where}: empty box {box} (xmin < xmax and ymin < ymax needed)')
  return TypedCell(cell_type, box)


def _check_box(cell: TypedCell, where: str, width: int, height: int) -> None:
  x0, y0, x1, y1 = cell.box
  if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
    raise errors.DataError(f'{where}: the box {cell.box} lies outside its {width}x{height} image')


def read_typed_fields(
  folder: str | pathlib.Path,
  check_images: bool = True,
  cell_types: tuple[str, ...] = classes.ALL_CELL_TYPES,
) -> list[TypedField]:
  """The fields of `folder` with their typed cells, sorted by file name, every row checked
  (and, with `check_images`, every image read once to check it and its boxes)."""
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise errors.DataError(f'{folder}: no such folder')
  images_dir, truth = folder / FIELDS_SUBDIR, folder / TRUTH_FILE
  if not images_dir.is_dir() or not truth.is_file():
    raise _layout_error(
      folder, f'no {FIELDS_SUBDIR}/' if not images_dir.is_dir() else f'no {TRUTH_FILE}'
    )
  images = {
    p.name: p
    for p in images_dir.iterdir()
    if p.is_file() and p.suffix.lower() in image_files.IMAGE_SUFFIXES
  }
  by_file: dict[str, list[TypedCell]] = {}
  line_of: dict[tuple[str, int], int] = {}  # (file, its k-th cell): its line in truth.csv
  for line, row in _read_rows(truth):
    where = f'{truth}, line {line}'
    if not row.get('file'):
      raise errors.DataError(f'{where}: no file name')
    if row['file'] not in images:
      raise errors.DataError(f'{where}: {row["file"]} is not in {images_dir}')
    line_of[row['file'], len(by_file.get(row['file'], []))] = line
    by_file.setdefault(row['file'], []).append(_typed_cell(row, where, cell_types))
  if not by_file:
    raise _layout_error(folder, f'{TRUTH_FILE} has no rows')
  unlisted = sorted(set(images) - set(by_file))
  if unlisted:
    raise errors.DataError(
      f'{images_dir / unlisted[0]}: a field without a row in {truth}'
      + (f' ({len(unlisted)} such fields)' if len(unlisted) > 1 else '')
      + '; add its typed cells, or move it out of the folder'
    )
  fields = [TypedField(images[name], tuple(cells)) for name, cells in sorted(by_file.items())]
  if check_images:
    for field in fields:
      height, width = image_files.read_rgb(field.path).shape[:2]
      for k, cell in enumerate(field.cells):
        where = f'{truth}, line {line_of[field.path.name, k]}: {field.path.name}'
        _check_box(cell, where, width, height)
  return fields


def is_typed_fields_folder(folder: str | pathlib.Path) -> bool:
  """Whether `folder` looks like this layout (has fields/ and truth.csv)."""
  folder = pathlib.Path(folder)
  return (folder / FIELDS_SUBDIR).is_dir() and (folder / TRUTH_FILE).is_file()


def stratified_folds(fields: list[TypedField], k: int, seed: int = 0) -> list[list[TypedField]]:
  """`fields` dealt into k folds, each field's first cell type spread evenly (deterministic)."""
  by_type: dict[str, list[TypedField]] = {}
  for field in sorted(fields, key=lambda f: f.path.name):
    by_type.setdefault(field.cells[0].cell_type, []).append(field)
  folds, turn = [[] for _ in range(k)], 0
  rng = np.random.default_rng(seed)
  for cell_type in sorted(by_type):
    for i in rng.permutation(len(by_type[cell_type])):
      folds[turn % k].append(by_type[cell_type][i])
      turn += 1
  return [sorted(f, key=lambda x: x.path.name) for f in folds]


def write_subset(fields: list[TypedField], out_dir: pathlib.Path) -> pathlib.Path:
  """A typed-fields folder of `fields` (images linked, not copied) at `out_dir`."""
  images = out_dir / FIELDS_SUBDIR
  images.mkdir(parents=True, exist_ok=True)
  rows = []
  for field in fields:
    link = images / field.path.name
    if not link.exists():
      link.symlink_to(field.path.resolve())
    rows += [[field.path.name, c.cell_type, *c.box] for c in field.cells]
  with (out_dir / TRUTH_FILE).open('w', newline='') as f:
    csv.writer(f).writerows([TRUTH_COLUMNS, *rows])
  return out_dir
