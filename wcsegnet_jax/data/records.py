"""Raw records: the images of the WBC Image Dataset's layout and of a plain images+masks folder,
listed and paired with their masks and cell types (read later: `image_files`, `label_maps`).

Everything a user's data can get wrong is checked here and reported as a `DataError` that names
the file and the problem; nothing downstream sees a half-valid example.
"""

import collections
import csv
import dataclasses
import os
import pathlib
from typing import Sequence

from absl import logging
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.data import image_files

RAW_DIR_ENV = 'WCSEG_DATA_DIR'
# TFDS config name -> folder of the WBC Image Dataset (Zheng et al., Micron 2018).
WBC_SUBSETS = {'jiangxi': 'Dataset 1', 'cellavision': 'Dataset 2'}
WBC_CSV = 'Class Labels of {subset}.csv'


DataError = errors.DataError  # raised here for every problem with the user's data


@dataclasses.dataclass(frozen=True)
class RawRecord:
  """One image of a raw dataset, before reading."""

  file_id: str
  image_path: pathlib.Path
  mask_path: pathlib.Path
  cell_type: str  # a name of classes.ALL_CELL_TYPES
  mask_is_label_map: bool = False


def resolve_raw_dir(raw_dir: str) -> pathlib.Path | None:
  """The raw folder from config, else $WCSEG_DATA_DIR, else None (download)."""
  raw_dir = raw_dir or os.environ.get(RAW_DIR_ENV, '')
  if not raw_dir:
    return None
  path = pathlib.Path(raw_dir).expanduser()
  if not path.is_dir():
    raise DataError(
      f'raw data folder {path} does not exist (set config.data.raw_dir or '
      f'${RAW_DIR_ENV} to the folder holding "Dataset 1/" and "Dataset 2/")'
    )
  return path


def _files_by_id(folder: pathlib.Path, suffixes: Sequence[str]) -> dict[str, pathlib.Path]:
  files = {}
  for p in sorted(folder.iterdir()):
    if p.is_file() and p.suffix.lower() in suffixes:
      if p.stem in files:
        raise DataError(f'{p}: two files share the id {p.stem!r} ({files[p.stem].name})')
      files[p.stem] = p
  return files


def _normalise_id(raw_id: str) -> str:
  """CSV ids may lose leading zeros ('7' for '007.bmp'); compare them as integers when numeric."""
  raw_id = raw_id.strip()
  return str(int(raw_id)) if raw_id.isdigit() else raw_id


def _is_label(text: str) -> bool:
  """Whether a CSV field reads as a class label: an integer code or a cell-type name."""
  text = text.strip()
  return text.isdigit() or text.lower() in classes.ALL_CELL_TYPES


def read_cell_type_csv(path: pathlib.Path) -> dict[str, str]:
  """Reads `image ID,class label` rows (codes 1..5 or type names) into {normalised id: type}.

  The header is optional: line 1 is a header only when its second field is not a label, so a
  file without one keeps its first image.
  """
  types = {}
  with open(path, newline='', encoding='utf-8-sig') as f:
    rows = list(csv.reader(f))
  if not rows:
    raise DataError(f'{path}: empty label CSV (expected `image ID,class label` rows)')
  first = 0 if len(rows[0]) > 1 and _is_label(rows[0][1]) else 1
  for line_no, row in enumerate(rows[first:], start=first + 1):
    if not row or not ''.join(row).strip():
      continue
    if len(row) < 2:
      raise DataError(f'{path}:{line_no}: expected `image ID,class label`, got {row!r}')
    raw_id, raw_label = row[0].strip(), row[1].strip()
    if raw_label.isdigit() and int(raw_label) in classes.CSV_CELL_TYPES:
      cell_type = classes.CSV_CELL_TYPES[int(raw_label)]
    elif raw_label.lower() in classes.ALL_CELL_TYPES:
      cell_type = raw_label.lower()
    else:
      raise DataError(
        f'{path}:{line_no}: label {raw_label!r} of image {raw_id!r} is not one of '
        f'1..5 ({classes.CSV_CELL_TYPES}) or a cell-type name'
      )
    key = _normalise_id(raw_id)
    if key in types:
      raise DataError(f'{path}:{line_no}: image {raw_id!r} is listed twice')
    types[key] = cell_type
  return types


def list_wbc_records(raw_dir: pathlib.Path, subset: str) -> list[RawRecord]:
  """Records of one subset ('jiangxi' | 'cellavision') of the WBC Image Dataset's layout."""
  folder = raw_dir / WBC_SUBSETS[subset]
  csv_path = raw_dir / WBC_CSV.format(subset=WBC_SUBSETS[subset])
  if not folder.is_dir():
    present = tuple(s for s, sub in WBC_SUBSETS.items() if (raw_dir / sub).is_dir())
    hint = (
      f'; it holds only {", ".join(WBC_SUBSETS[s] + "/" for s in present)}: use that '
      f'alone with --config.data.datasets="{present}"'
      if present
      else ''
    )
    raise DataError(
      f'{folder} does not exist: {raw_dir} is not in the WBC Image Dataset layout '
      f'("Dataset 1/", "Dataset 2/" and their class CSVs){hint}'
    )
  if not csv_path.is_file():
    raise DataError(f'{csv_path} does not exist: the cell types of {folder} are unknown')
  images = _files_by_id(folder, ('.bmp', '.jpg', '.jpeg', '.tif', '.tiff'))
  masks = _files_by_id(folder, ('.png',))
  types = read_cell_type_csv(csv_path)
  return _match(images, masks, types, folder, folder, csv_path)


def list_folder_records(folder_dir: pathlib.Path, table: classes.ClassTable) -> list[RawRecord]:
  """Records of a plain folder: images/, masks/ and an optional labels.csv (see README).

  With labels.csv, masks use the WBC scheme (0 background, 128 cytoplasm, 255 nucleus) and the
  nucleus takes the listed cell type. Without it, masks are label maps of `table`'s class ids.
  """
  image_dir, mask_dir = folder_dir / 'images', folder_dir / 'masks'
  for d in (image_dir, mask_dir):
    if not d.is_dir():
      raise DataError(
        f'{d} does not exist: a folder dataset holds images/ and masks/ (and optionally labels.csv)'
      )
  csv_path = folder_dir / 'labels.csv'
  types = read_cell_type_csv(csv_path) if csv_path.is_file() else None
  images = _files_by_id(image_dir, image_files.IMAGE_SUFFIXES)
  masks = _files_by_id(mask_dir, ('.png', '.bmp', '.tif', '.tiff'))
  return _match(
    images, masks, types, image_dir, mask_dir, csv_path if types is not None else None, table
  )


def _match(
  images: dict[str, pathlib.Path],
  masks: dict[str, pathlib.Path],
  types: dict[str, str] | None,
  image_dir: pathlib.Path,
  mask_dir: pathlib.Path,
  csv_path: pathlib.Path | None,
  table: classes.ClassTable | None = None,
) -> list[RawRecord]:
  """Pairs images with masks (same id) and, when `types` is given, with one CSV row each."""
  records = []
  for file_id, image_path in sorted(images.items()):
    if file_id not in masks:
      raise DataError(f'{image_path}: no mask {file_id}.png in {mask_dir}')
    if types is not None:
      key = _normalise_id(file_id)
      if key not in types:
        raise DataError(f'{image_path}: image id {file_id!r} has no row in {csv_path}')
      cell_type = types[key]
    else:
      cell_type = _cell_type_of_label_map(masks[file_id], table)
    records.append(
      RawRecord(file_id, image_path, masks[file_id], cell_type, mask_is_label_map=types is None)
    )
  for file_id, mask_path in sorted(masks.items()):
    if file_id not in images:
      raise DataError(f'{mask_path}: mask without an image {file_id}.* in {image_dir}')
  if types is not None:
    missing = sorted(set(types) - {_normalise_id(r.file_id) for r in records})
    if missing:
      raise DataError(
        f'{csv_path}: lists {len(missing)} image(s) with no image file in '
        f'{image_dir}, e.g. {missing[:5]}'
      )
  return records


def _cell_type_of_label_map(mask_path: pathlib.Path, table: classes.ClassTable) -> str:
  """The one cell type whose class id a label-map mask holds (besides background and, with
  `table.cytoplasm`, the cytoplasm, which it must then hold)."""
  mask = image_files.read_mask(mask_path, label_map=True)
  present = np.unique(mask[mask > 0])
  outside = present[present >= table.num_classes]
  if outside.size:
    raise DataError(
      f'{mask_path}: label-map mask with values {outside[:10].tolist()} outside '
      f'the class ids ({table.describe()}); without labels.csv, masks hold class '
      f'ids (0/128/255 masks need a labels.csv)'
    )
  nucleus = [int(c) for c in present if c in table.nucleus_ids]
  if not nucleus:
    raise DataError(
      f'{mask_path}: label-map mask without a nucleus pixel (values '
      f'{np.unique(mask).tolist()}); expected the nucleus as its class id, one of '
      f'{table.describe()}'
    )
  if len(nucleus) != 1:
    raise DataError(
      f'{mask_path}: label-map mask holds the cell types {nucleus}; expected '
      f'exactly one cell type per image ({table.describe()})'
    )
  if table.cytoplasm and table.cytoplasm_id not in present:
    raise DataError(
      f'{mask_path}: label-map mask without cytoplasm (no pixel of class '
      f"{table.cytoplasm_id}) but config.data.cytoplasm=True; this folder's masks "
      f'carry only the nucleus: label the cytoplasm {table.cytoplasm_id}, or set '
      f'data.cytoplasm=False'
    )
  return table.names[nucleus[0]]


def list_raw_records(
  source: str, raw_dir: pathlib.Path, table: classes.ClassTable
) -> list[RawRecord]:
  """Records of a source: 'jiangxi' | 'cellavision' (WBC layout) or 'folder'."""
  if source == 'folder':
    return list_folder_records(raw_dir, table)
  if source in WBC_SUBSETS:
    return list_wbc_records(raw_dir, source)
  raise DataError(f'unknown dataset {source!r}; expected one of {sorted(WBC_SUBSETS)} or "folder"')


def filter_cell_types(
  records: list[RawRecord], cell_types: Sequence[str], where: str, every_type: bool = True
) -> list[RawRecord]:
  """Keeps the configured cell types; an empty result is an error, and so, with `every_type`
  (data a model learns from), is a configured type without an image: its class could not be
  learnt."""
  kept = [r for r in records if r.cell_type in cell_types]
  left_out = [r for r in records if r.cell_type not in cell_types]
  if left_out:
    counts = collections.Counter(r.cell_type for r in left_out)
    logging.warning(
      '%s: left out %d image(s) of cell types the model has no class for (%s: %s; '
      'config.data.cell_types=%s)',
      where,
      len(left_out),
      ', '.join(f'{n} {t}' for t, n in sorted(counts.items())),
      ', '.join(r.file_id for r in left_out[:5]) + (', ...' if len(left_out) > 5 else ''),
      tuple(cell_types),
    )
  if not kept:
    raise DataError(
      f'{where}: no image of the cell types {tuple(cell_types)} '
      f'({len(records)} images before filtering)'
    )
  missing = [t for t in cell_types if not any(r.cell_type == t for r in kept)]
  if every_type and missing:
    raise DataError(
      f'{where}: no image of the cell type {missing[0]!r} (config.data.cell_types='
      f'{tuple(cell_types)}; missing: {missing}); leave it out of '
      f'data.cell_types, or add its images'
    )
  return kept
