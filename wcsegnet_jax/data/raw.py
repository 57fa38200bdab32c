"""Reading raw data: the WBC Image Dataset's layout and a plain images+masks folder.

Everything a user's data can get wrong is checked here and reported as a `DataError` that names
the file and the problem; nothing downstream sees a half-valid example.
"""

import collections
import contextlib
import csv
import dataclasses
import io
import os
import pathlib
import struct
import sys
import tempfile
import threading
from typing import Iterator, Sequence
import zlib

from absl import logging
import cv2
import numpy as np
from PIL import Image   # palette label maps (OpenCV expands them) and EXIF orientation

from wcsegnet_jax import classes
from wcsegnet_jax import errors

RAW_DIR_ENV = 'WCSEG_DATA_DIR'
# TFDS config name -> folder of the WBC Image Dataset (Zheng et al., Micron 2018).
WBC_SUBSETS = {'jiangxi': 'Dataset 1', 'cellavision': 'Dataset 2'}
WBC_CSV = 'Class Labels of {subset}.csv'
IMAGE_SUFFIXES = ('.bmp', '.png', '.jpg', '.jpeg', '.tif', '.tiff')
MASK_LEVELS = np.array([0, 128, 255], np.int16)   # background, cytoplasm, nucleus
NUCLEUS_LEVEL = 255
CYTOPLASM_LEVEL = 128


DataError = errors.DataError   # raised here for every problem with the user's data


@dataclasses.dataclass(frozen=True)
class RawRecord:
  """One image of a raw dataset, before reading."""
  file_id: str
  image_path: pathlib.Path
  mask_path: pathlib.Path
  cell_type: str            # a name of classes.ALL_CELL_TYPES
  mask_is_label_map: bool = False


def resolve_raw_dir(raw_dir: str) -> pathlib.Path | None:
  """The raw folder from config, else $WCSEG_DATA_DIR, else None (download)."""
  raw_dir = raw_dir or os.environ.get(RAW_DIR_ENV, '')
  if not raw_dir:
    return None
  path = pathlib.Path(raw_dir).expanduser()
  if not path.is_dir():
    raise DataError(f'raw data folder {path} does not exist (set config.data.raw_dir or '
                    f'${RAW_DIR_ENV} to the folder holding "Dataset 1/" and "Dataset 2/")')
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
      raise DataError(f'{path}:{line_no}: label {raw_label!r} of image {raw_id!r} is not one of '
                      f'1..5 ({classes.CSV_CELL_TYPES}) or a cell-type name')
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
    hint = (f'; it holds only {", ".join(WBC_SUBSETS[s] + "/" for s in present)}: use that '
            f'alone with --config.data.datasets="{present}"' if present else '')
    raise DataError(f'{folder} does not exist: {raw_dir} is not in the WBC Image Dataset layout '
                    f'("Dataset 1/", "Dataset 2/" and their class CSVs){hint}')
  if not csv_path.is_file():
    raise DataError(f'{csv_path} does not exist: the cell types of {folder} are unknown')
  images = _files_by_id(folder, ('.bmp', '.jpg', '.jpeg', '.tif', '.tiff'))
  masks = _files_by_id(folder, ('.png',))
  types = read_cell_type_csv(csv_path)
  return _match(images, masks, types, folder, folder, csv_path)


def list_folder_records(folder_dir: pathlib.Path,
                        table: classes.ClassTable) -> list[RawRecord]:
  """Records of a plain folder: images/, masks/ and an optional labels.csv (see README).

  With labels.csv, masks use the WBC scheme (0 background, 128 cytoplasm, 255 nucleus) and the
  nucleus takes the listed cell type. Without it, masks are label maps of `table`'s class ids.
  """
  image_dir, mask_dir = folder_dir / 'images', folder_dir / 'masks'
  for d in (image_dir, mask_dir):
    if not d.is_dir():
      raise DataError(f'{d} does not exist: a folder dataset holds images/ and masks/ '
                      f'(and optionally labels.csv)')
  csv_path = folder_dir / 'labels.csv'
  types = read_cell_type_csv(csv_path) if csv_path.is_file() else None
  images = _files_by_id(image_dir, IMAGE_SUFFIXES)
  masks = _files_by_id(mask_dir, ('.png', '.bmp', '.tif', '.tiff'))
  return _match(images, masks, types, image_dir, mask_dir, csv_path if types is not None else None,
                table)


def _match(images: dict[str, pathlib.Path], masks: dict[str, pathlib.Path],
           types: dict[str, str] | None, image_dir: pathlib.Path, mask_dir: pathlib.Path,
           csv_path: pathlib.Path | None, table: classes.ClassTable | None = None
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
    records.append(RawRecord(file_id, image_path, masks[file_id], cell_type,
                             mask_is_label_map=types is None))
  for file_id, mask_path in sorted(masks.items()):
    if file_id not in images:
      raise DataError(f'{mask_path}: mask without an image {file_id}.* in {image_dir}')
  if types is not None:
    missing = sorted(set(types) - {_normalise_id(r.file_id) for r in records})
    if missing:
      raise DataError(f'{csv_path}: lists {len(missing)} image(s) with no image file in '
                      f'{image_dir}, e.g. {missing[:5]}')
  return records


def _cell_type_of_label_map(mask_path: pathlib.Path, table: classes.ClassTable) -> str:
  """The one cell type whose class id a label-map mask holds (besides background and, with
  `table.cytoplasm`, the cytoplasm, which it must then hold)."""
  mask = read_mask(mask_path, label_map=True)
  present = np.unique(mask[mask > 0])
  outside = present[present >= table.num_classes]
  if outside.size:
    raise DataError(f'{mask_path}: label-map mask with values {outside[:10].tolist()} outside '
                    f'the class ids ({table.describe()}); without labels.csv, masks hold class '
                    f'ids (0/128/255 masks need a labels.csv)')
  nucleus = [int(c) for c in present if c in table.nucleus_ids]
  if not nucleus:
    raise DataError(f'{mask_path}: label-map mask without a nucleus pixel (values '
                    f'{np.unique(mask).tolist()}); expected the nucleus as its class id, one of '
                    f'{table.describe()}')
  if len(nucleus) != 1:
    raise DataError(f'{mask_path}: label-map mask holds the cell types {nucleus}; expected '
                    f'exactly one cell type per image ({table.describe()})')
  if table.cytoplasm and table.cytoplasm_id not in present:
    raise DataError(f'{mask_path}: label-map mask without cytoplasm (no pixel of class '
                    f'{table.cytoplasm_id}) but config.data.cytoplasm=True; this folder\'s masks '
                    f'carry only the nucleus: label the cytoplasm {table.cytoplasm_id}, or set '
                    f'data.cytoplasm=False')
  return table.names[nucleus[0]]


def list_raw_records(source: str, raw_dir: pathlib.Path,
                     table: classes.ClassTable) -> list[RawRecord]:
  """Records of a source: 'jiangxi' | 'cellavision' (WBC layout) or 'folder'."""
  if source == 'folder':
    return list_folder_records(raw_dir, table)
  if source in WBC_SUBSETS:
    return list_wbc_records(raw_dir, source)
  raise DataError(f'unknown dataset {source!r}; expected one of {sorted(WBC_SUBSETS)} or "folder"')


def filter_cell_types(records: list[RawRecord], cell_types: Sequence[str], where: str,
                      every_type: bool = True) -> list[RawRecord]:
  """Keeps the configured cell types; an empty result is an error, and so, with `every_type`
  (data a model learns from), is a configured type without an image: its class could not be
  learnt."""
  kept = [r for r in records if r.cell_type in cell_types]
  left_out = [r for r in records if r.cell_type not in cell_types]
  if left_out:
    counts = collections.Counter(r.cell_type for r in left_out)
    logging.warning('%s: left out %d image(s) of cell types the model has no class for (%s: %s; '
                    'config.data.cell_types=%s)', where, len(left_out),
                    ', '.join(f'{n} {t}' for t, n in sorted(counts.items())),
                    ', '.join(r.file_id for r in left_out[:5])
                    + (', ...' if len(left_out) > 5 else ''), tuple(cell_types))
  if not kept:
    raise DataError(f'{where}: no image of the cell types {tuple(cell_types)} '
                    f'({len(records)} images before filtering)')
  missing = [t for t in cell_types if not any(r.cell_type == t for r in kept)]
  if every_type and missing:
    raise DataError(f'{where}: no image of the cell type {missing[0]!r} (config.data.cell_types='
                    f'{tuple(cell_types)}; missing: {missing}); leave it out of '
                    f'data.cell_types, or add its images')
  return kept


# --- Reading image files ------------------------------------------------------------------------
# OpenCV decodes a truncated JPEG into a half-gray image (libjpeg only prints a bare warning), so
# each file's structure is checked before it is decoded: truncated or corrupt files are rejected
# with the file named, and the decoders never print about them.


def _jpeg_problem(data: bytes) -> str | None:
  """Walks the JPEG's segments and scan data to its end-of-image marker (FFD9); None if found.

  Stray bytes between markers are skipped as libjpeg does; data after the end is allowed.
  """
  pos = 2   # after SOI
  while (pos := data.find(b'\xff', pos)) >= 0 and pos + 1 < len(data):
    marker = data[pos + 1]
    if marker == 0xD9:
      return None
    if marker == 0xFF:                                    # fill byte
      pos += 1
    elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:   # stuffing, TEM, restart: no length
      pos += 2
    else:                                                 # a segment: skip its payload
      pos += 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
  return f'truncated JPEG (no end-of-image marker FFD9 in its {len(data)} bytes)'


def _png_problem(data: bytes) -> str | None:
  """Walks the PNG's chunks to IEND, checking each one's CRC; None if all is well."""
  pos, view = 8, memoryview(data)
  while pos + 12 <= len(data):
    length, tag = struct.unpack('>I4s', data[pos:pos + 8])
    end = pos + 12 + length
    if end > len(data):
      break
    if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], 'big'):
      return f'corrupt PNG (its {tag.decode("latin-1")} chunk fails its CRC)'
    if tag == b'IEND':
      return None
    pos = end
  return f'truncated PNG (no IEND chunk in its {len(data)} bytes)'


def _bmp_problem(data: bytes) -> str | None:
  """Compares an uncompressed BMP's size with what its header needs; None if it is enough."""
  header_size = int.from_bytes(data[14:18], 'little')
  if len(data) < (26 if header_size == 12 else 34):
    return f'truncated BMP (a header of {len(data)} bytes)'
  offset = int.from_bytes(data[10:14], 'little')
  if header_size == 12:   # OS/2 core header
    width, height, _, bpp = struct.unpack('<HHHH', data[18:26])
    compression = 0
  else:
    width, height, _, bpp, compression = struct.unpack('<iiHHI', data[18:34])
  if compression not in (0, 3, 6):   # run-length coded: the header does not give the size
    return None
  need = offset + (abs(width) * bpp + 31) // 32 * 4 * abs(height)
  if len(data) < need:
    return f'truncated or corrupt BMP ({len(data)} bytes where its header needs {need})'
  return None


# Formats checked by their leading bytes, not their suffix. TIFF is left to libtiff, which
# rejects truncated strips itself.
_STRUCTURE_CHECKS = ((b'\xff\xd8', _jpeg_problem), (b'\x89PNG\r\n\x1a\n', _png_problem),
                     (b'BM', _bmp_problem))


def file_structure_problem(data: bytes) -> str | None:
  """Why an image file's bytes are truncated or corrupt, or None (also for unchecked formats)."""
  for magic, problem in _STRUCTURE_CHECKS:
    if data.startswith(magic):
      return problem(data)
  return None


@contextlib.contextmanager
def _opencv_quiet():
  """Silences OpenCV's own log lines (e.g. libtiff's errors) while decoding a file we report."""
  level = cv2.utils.logging.getLogLevel()
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
  try:
    yield
  finally:
    cv2.utils.logging.setLogLevel(level)


def _read_checked(path: pathlib.Path, what: str) -> bytes:
  """The bytes of an image or mask file whose structure is sound; else a DataError naming it."""
  try:
    data = path.read_bytes()
  except OSError as e:
    raise DataError(f'{path}: not a readable {what} file ({e.strerror or e})') from None
  problem = file_structure_problem(data) if data else 'an empty file'
  if problem:
    raise DataError(f'{path}: not a readable {what} file: {problem}')
  return data


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _c_stderr_captured() -> Iterator[list[str]]:
  """What C libraries print on file descriptor 2 meanwhile (libjpeg reports corrupt data only
  there, as a warning, and decodes anyway); yields a list that receives it at the end."""
  printed = []
  with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
    try:
      if sys.stderr is not None and not sys.stderr.closed:
        sys.stderr.flush()
      saved = os.dup(2)
    except OSError:   # no stderr at all (a daemon): nothing to capture
      yield printed
      printed.append('')
      return
    os.dup2(sink.fileno(), 2)
    try:
      yield printed
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      printed.append(sink.read().decode('utf-8', 'replace'))


def _decode(data: bytes, path: pathlib.Path, what: str) -> np.ndarray:
  """Decodes with OpenCV as stored (depth, channels, alpha); a failure names the file. A JPEG
  whose data libjpeg calls corrupt (it decodes those partly gray) is a failure too."""
  watch = _c_stderr_captured() if data.startswith(b'\xff\xd8') else contextlib.nullcontext([''])
  with _opencv_quiet(), watch as printed:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  lines = printed[0].splitlines()
  corrupt = [line for line in lines if 'Corrupt JPEG' in line or 'Premature end' in line]
  other = [line for line in lines if line not in corrupt]   # not ours to hide
  if other and sys.stderr is not None and not sys.stderr.closed:
    print('\n'.join(other), file=sys.stderr)
  if corrupt:
    raise DataError(f'{path}: not a readable {what} file: corrupt JPEG ({corrupt[0].strip()})')
  if array is None:
    raise DataError(f'{path}: not a readable {what} file (truncated, corrupt or not an image)')
  return as_viewed(array, data)


# EXIF orientation (tag 0x0112) -> what turns the stored pixels into the picture viewers show.
_EXIF_ORIENTATION = 0x0112
_TURN = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
         5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
         7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


def exif_orientation(data: bytes) -> int:
  """A file's EXIF orientation (1, as stored, when it has none or PIL cannot read it)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      return int(image.getexif().get(_EXIF_ORIENTATION, 1))
  except (OSError, ValueError, SyntaxError, TypeError):
    return 1


def as_viewed(array: np.ndarray, data: bytes) -> np.ndarray:
  """The pixels as every viewer shows them: a camera stores them as the sensor lay and says in
  the EXIF orientation how to turn them, which OpenCV's IMREAD_UNCHANGED ignores (a portrait
  photo would be read on its side, and paired with its mask turned 90 degrees)."""
  turn = _TURN.get(exif_orientation(data))
  return np.ascontiguousarray(turn(array)) if turn else array


def _palette_indices(data: bytes) -> np.ndarray | None:
  """A palette image's index plane, else None: in a label map the indices are the class ids,
  while OpenCV would expand them into a colour mask."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      return as_viewed(np.asarray(image), data) if image.mode == 'P' else None
  except (OSError, ValueError, SyntaxError):   # a format PIL does not read: OpenCV decides
    return None


def read_rgb(path: pathlib.Path) -> np.ndarray:
  """An 8-bit RGB image (H, W, 3); grayscale and RGBA are converted, anything else is an error."""
  image = _decode(_read_checked(path, 'image'), path, 'image')
  if image.dtype != np.uint8:
    raise DataError(f'{path}: {image.dtype} pixels; expected 8-bit RGB')
  if image.ndim == 2:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
  if image.ndim == 3 and image.shape[2] == 3:
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  if image.ndim == 3 and image.shape[2] == 4:
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  raise DataError(f'{path}: image of shape {image.shape}; expected grayscale, RGB or RGBA')


def read_mask(path: pathlib.Path, label_map: bool = False) -> np.ndarray:
  """A single-channel 8-bit mask (H, W); a 3-channel mask must be gray (equal channels).

  A label map stored as a palette image gives its palette indices (its class ids).
  """
  data = _read_checked(path, 'mask')
  mask = _palette_indices(data) if label_map else None
  if mask is None:
    mask = _decode(data, path, 'mask')
  if mask.dtype != np.uint8:
    raise DataError(f'{path}: {mask.dtype} mask; expected 8-bit')
  if mask.ndim == 3 and mask.shape[2] in (3, 4):
    rgb = mask[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
      raise DataError(f'{path}: a colour mask; expected gray levels (0/128/255 or class ids)')
    mask = rgb[..., 0]
  if mask.ndim != 2:
    raise DataError(f'{path}: mask of shape {mask.shape}; expected a single channel')
  return mask


# --- Masks to label maps ------------------------------------------------------------------------


def snap_mask_levels(mask: np.ndarray, path: pathlib.Path, tolerance: int,
                     max_off_level_fraction: float) -> np.ndarray:
  """Snaps gray levels to the nearest of 0/128/255; a mask that does not fit that is an error.

  Some of the dataset's masks carry a few stray gray levels (anti-aliasing, JPEG history); a mask
  whose pixels are mostly far from every level follows another scheme and would give silently
  wrong labels. The few far ones that are snapped are logged, one line per file.
  """
  distance = np.abs(mask[..., None].astype(np.int16) - MASK_LEVELS)
  nearest = distance.argmin(-1)
  n_off = int((distance.min(-1) > tolerance).sum())
  off = n_off / mask.size
  if off > max_off_level_fraction:
    raise DataError(f'{path}: {off:.1%} of the mask is farther than {tolerance} from the levels '
                    f'0/128/255 (background/cytoplasm/nucleus); is this a mask of another scheme?')
  if n_off:
    logging.warning('%s: snapped %d mask pixels (%.2f%%) farther than %d from 0/128/255 to the '
                    'nearest level', path, n_off, 100 * off, tolerance)
  return MASK_LEVELS[nearest].astype(np.uint8)


def _no_nucleus_message(mask: np.ndarray, path: pathlib.Path) -> str:
  """Why a 0/128/255 mask has no nucleus, with a hint for the usual export mistakes."""
  values = np.unique(mask)
  text = (f'{path}: no nucleus pixel in the mask (values {values[:10].tolist()}); expected '
          f'levels 0 background, 128 cytoplasm, {NUCLEUS_LEVEL} nucleus')
  if values.tolist() == [0]:
    return text + ' (this mask is all background)'
  if set(values.tolist()) <= {0, 1}:
    return text + f' (it looks like a 0/1 mask: save the nucleus as {NUCLEUS_LEVEL})'
  if values.max() < len(classes.PALETTE):   # small values: class ids, not gray levels
    return text + (' (it looks like a label map of class ids: a folder dataset reads masks as '
                   'class ids when it has no labels.csv)')
  return text


def label_map_from_mask(mask: np.ndarray, record: RawRecord, table: classes.ClassTable,
                        tolerance: int, max_off_level_fraction: float) -> np.ndarray:
  """The uint8 label map of `table`: nucleus pixels take the cell's class id, cytoplasm pixels
  the cytoplasm's when `table.cytoplasm` (else background), the rest is background.

  A mask without a nucleus pixel is an error: it would teach the model that the cell has none;
  likewise one without cytoplasm when the table has it.
  """
  class_id = table.type_id(record.cell_type)
  if record.mask_is_label_map:   # checked when listed: 0, `class_id` and the cytoplasm's id
    return mask.astype(np.uint8)
  snapped = snap_mask_levels(mask, record.mask_path, tolerance, max_off_level_fraction)
  if not (snapped == NUCLEUS_LEVEL).any():
    raise DataError(_no_nucleus_message(mask, record.mask_path))
  label_map = np.where(snapped == NUCLEUS_LEVEL, class_id, classes.BACKGROUND)
  if table.cytoplasm:
    if not (snapped == CYTOPLASM_LEVEL).any():
      raise DataError(f'{record.mask_path}: no cytoplasm pixel ({CYTOPLASM_LEVEL} gray) in the '
                      f'mask (values {np.unique(mask)[:10].tolist()}) but '
                      f'config.data.cytoplasm=True; mark the cytoplasm {CYTOPLASM_LEVEL}, or '
                      f'set data.cytoplasm=False')
    label_map = np.where(snapped == CYTOPLASM_LEVEL, table.cytoplasm_id, label_map)
  return label_map.astype(np.uint8)


def _interpolation(height: int, width: int, size: int) -> int:
  """Area when shrinking, bilinear when enlarging: both keep pixel centres where they were."""
  return cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """To size x size: area when shrinking, bilinear when enlarging (training and prediction)."""
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  return cv2.resize(image, (size, size), interpolation=_interpolation(h, w, size))


def resize_label_map(label_map: np.ndarray, size: int) -> np.ndarray:
  """To size x size, each pixel taking the class that covers most of it (no new labels).

  Each class's indicator is resized as `resize_image` resizes images and the largest wins (ties
  to the lower id). cv2's INTER_NEAREST, used before, samples source pixel floor(x * scale),
  one source pixel up-left of the pixel's centre on average at 300 -> 120: the label maps sat
  0.4 px off their images (CellaVision's nucleus Dice of those labels against these: 0.977).
  """
  h, w = label_map.shape
  if (h, w) == (size, size):
    return label_map
  ids = np.unique(label_map)
  interpolation = _interpolation(h, w, size)
  cover = np.stack([cv2.resize((label_map == i).astype(np.float32), (size, size),
                               interpolation=interpolation) for i in ids], axis=-1)
  return ids[np.argmax(cover, axis=-1)].astype(label_map.dtype)


def resize_pair(image: np.ndarray, label_map: np.ndarray, size: int):
  """The image as `resize_image`, the label map as `resize_label_map`."""
  return resize_image(image, size), resize_label_map(label_map, size)


def load_example(record: RawRecord, table: classes.ClassTable, image_size: int, tolerance: int,
                 max_off_level_fraction: float, color_step=None
                 ) -> dict[str, np.ndarray | str | int]:
  """Reads, checks and resizes one record into an example of `table`'s classes (before the
  TFDS encoding); `color_step` (`color.step_of`) acts on the image as read, before resizing."""
  image = read_rgb(record.image_path)
  image = image if color_step is None else color_step(image)
  mask = read_mask(record.mask_path, label_map=record.mask_is_label_map)
  if image.shape[:2] != mask.shape:
    raise DataError(f'{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image '
                    f'{record.image_path.name} is {image.shape[1]}x{image.shape[0]}')
  label_map = label_map_from_mask(mask, record, table, tolerance, max_off_level_fraction)
  image, resized = resize_pair(image, label_map, image_size)
  class_id = table.type_id(record.cell_type)
  if not (resized == class_id).any():   # a few pixels that shrinking drops
    raise DataError(f'{record.mask_path}: its nucleus ({int((label_map == class_id).sum())} '
                    f'pixels) '
                    f'vanishes when the {mask.shape[1]}x{mask.shape[0]} image is resized to '
                    f'{image_size}x{image_size} (data.image_size)')
  return {'image': image, 'label_map': resized,
          'cell_type': class_id,
          'file_id': record.file_id}
