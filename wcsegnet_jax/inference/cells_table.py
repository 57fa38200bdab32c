"""The tables predict writes: cells.csv, a row per cell found, and differential.csv, the cells
counted per type as a lab's differential count.

cells.csv grows as a run goes (`append_cells` after each batch of images), so a run stopped
before its end leaves the rows of the images it did; `read_cells` takes them back to continue."""

import csv
import pathlib
from typing import Sequence

from wcsegnet_jax.cells import cells
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files


CSV_COLUMNS = (
  'file',
  'cell',
  'x0',
  'y0',
  'x1',
  'y1',
  'touches_border',
  'predicted_type',
  'confidence',
  'review',
  'counted',
  'exclusion_reason',
  'nucleus_area_px',
  'nucleus_area_um2',
  'cell_area_px',
  'cell_area_um2',
  'nc_ratio',
  'perimeter_px',
  'perimeter_um',
  'circularity',
  'solidity',
  'nucleus_parts',
  'mask_file',
  'field_scale',
)


DIFFERENTIAL_COLUMNS = ('cell_type', 'count', 'percent')


def cell_row(
  file: str,
  mask_file: str,
  index: int,
  cell: cells.Cell,
  class_names: Sequence[str],
  pixel_size_um: float | None,
  exclusion_reason: str = '',
  counted: bool = True,
) -> dict:
  """One cells.csv row: where the cell is, its voted type and confidence, whether the
  differential counts it (and why not: `cells.not_counted_reasons`), its sizes and nucleus
  measurements (areas and lengths in micrometres too with `pixel_size_um`)."""
  m = cell.nucleus
  um = lambda v, power: (
    '' if pixel_size_um is None or v is None else (f'{v * pixel_size_um**power:.4f}')
  )
  x0, y0, x1, y1 = cell.bbox
  return {
    'file': file,
    'cell': index,
    'x0': x0,
    'y0': y0,
    'x1': x1,
    'y1': y1,
    'touches_border': int(cell.touches_border),
    'predicted_type': class_names[cell.class_id],
    'confidence': f'{cell.confidence:.4f}',
    'review': 0,
    'counted': int(counted),
    'exclusion_reason': exclusion_reason,
    'nucleus_area_px': m['area_px'],
    'nucleus_area_um2': um(m['area_px'], 2),
    'cell_area_px': '' if cell.cell_area_px is None else cell.cell_area_px,
    'cell_area_um2': um(cell.cell_area_px, 2),
    'nc_ratio': '' if cell.nc_ratio is None else f'{cell.nc_ratio:.4f}',
    'perimeter_px': f'{m["perimeter_px"]:.2f}',
    'perimeter_um': um(m['perimeter_px'], 1),
    'circularity': f'{m["circularity"]:.4f}',
    'solidity': f'{m["solidity"]:.4f}',
    'nucleus_parts': m['nucleus_parts'],
    'mask_file': mask_file,
  }


def write_cells(path: pathlib.Path, rows: Sequence[dict]) -> None:
  """cells.csv: `cell_row`'s rows, each with its image's field_scale, in CSV_COLUMNS' order."""
  files.write_csv_atomic(path, CSV_COLUMNS, [[r[k] for k in CSV_COLUMNS] for r in rows])


def write_differential(path: pathlib.Path, differential: Sequence[dict]) -> None:
  """differential.csv: a row per cell type and the total (`cells.differential`)."""
  files.write_csv_atomic(
    path,
    DIFFERENTIAL_COLUMNS,
    [[r['cell_type'], r['count'], f'{r["percent"]:.2f}'] for r in differential],
  )


def append_cells(path: pathlib.Path, rows: Sequence[dict]) -> None:
  """Adds `rows` to a cells.csv that `write_cells` began; flushed before it returns."""
  with open(path, 'a', encoding='utf-8', newline='') as f:
    csv.writer(f, lineterminator='\n').writerows([[r[k] for k in CSV_COLUMNS] for r in rows])


def read_cells(path: pathlib.Path, mask_files: set[str]) -> list[dict]:
  """The rows of a cells.csv whose image (its mask_file) is one of `mask_files`: the images a
  stopped run finished. Rows of other images, and a last row cut short, are left out. A
  missing table, or one of other columns, is a DataError: those images' rows would be lost."""
  if not mask_files:
    return []
  try:
    with open(path, encoding='utf-8', newline='') as f:
      reader = csv.DictReader(f)
      if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise errors.DataError(
          f'{path}: not the columns predict writes; it cannot be resumed: '
          f'use --overwrite to start again, or choose another --output'
        )
      return [row for row in reader if None not in row.values() and row['mask_file'] in mask_files]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise errors.DataError(
      f'{path}: unreadable ({e}); the images done before cannot be kept: '
      f'use --overwrite to start again, or choose another --output'
    ) from None
