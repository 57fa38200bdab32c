r"""Segments and classifies new images with a trained model; writes masks, overlays and the cells.

  python -m wcsegnet_jax.predict --output=OUT [--workdir=DIR | --model=NAME|PATH] \
      [--checkpoint=latest] [--field_scale=1.0|auto] [--pixel_size_um=0.1] [--batch_size=16] \
      [--tta] [--overwrite] [--backend=jax|onnx [--onnx_file=model.onnx] [--threads=N]] \
      IMAGE_OR_FOLDER...

Without --workdir it uses a model shipped in the package (wcsegnet_jax/pretrained/): by default
'differential' (all five white-cell types and the cytoplasm, configs/cross_lab.py, made for other
labs' stains), or --model=paper (the paper's three types), so it works right after installing.
With a workdir, the model's config is read from `DIR/config.json` (written by training), so no
--config is needed, and the checkpoint is the config's `eval.checkpoint` (the latest, as
evaluation: the best one was picked by test Dice). The model's colour step (data.color) acts on
each image as read, whole, as in training.

Inputs are image files, or folders whose images (.bmp, .png, .jpg, .jpeg, .tif, .tiff, any case;
not recursive) are all taken: point it at a folder of images only. A WBC `Dataset 1/` folder,
whose .png masks sit beside its .bmp images, is refused; give its images, `"Dataset 1"/*.bmp`.

Each image, of any size, is one cell crop: it is resized to the training size, segmented, and its
class probabilities are resized back to the original size (bilinear) before they are decoded
(eval.decode), so the mask has the original size and smooth edges. With --field_scale=F each image
is a field of many cells instead: resized by F to the training data's scale (1.0 for fields at the
Jiangxi crops' scale, 0.4 at the 300-pixel CellaVision crops', which training resized to 120),
segmented in overlapping tiles of the training size (`fields.py`), never squashed whole;
--field_scale=auto estimates F per image from the nuclei the model finds (`scale_estimate.py`;
cells.csv's field_scale column gives the scale used, for crops too). Per image it writes
`<stem>_mask.png` (class colours) and `<stem>_overlay.png` (each cell outlined in its type's
colour and numbered with its type and confidence, a legend below: `overlays.py`); a second
image with the same stem gets `<stem>_2_mask.png`, and so on; `contact_sheet.png` shows them all.

The predicted map is then split into cells (`cells.py`: one connected cell region per cell; a
neutrophil's lobes are one cell; a model without a cytoplasm class, as the paper model, has its
cells as nucleus parts within --cell_merge_gap_px of each other). `cells.csv` has one row per
cell: its image, number, bounding box (x0, y0, x1, y1 exclusive, pixels of the image), whether it
touches the image border (cut: its sizes are partial), predicted type and confidence (by the
model's cell typer where it has one, `cell_typing.py`: its calibrated probability, and review=1
below the typer's threshold, counted as 'uncertain' in the differential; else the majority of
its nucleus pixels and the mean probability of that type over them), nucleus and cell area, N:C ratio (blank
without a cytoplasm class), nucleus measurements (see `morphometry.py`), in micrometres too
with --pixel_size_um, and the scale the image was segmented at. An image with no cell has no row and is named on stderr and in the
summary. `differential.csv` counts the cells of each type over all images, with percentages, as
a lab's differential count; cells cut by the image border and objects too small or misshapen for
a cell (`cells.CellRules`) have counted=0 and the reason in cells.csv, and are counted only with
--count_all_cells. `predict_outputs.json` lists the files written and the model.

OUT must be new or empty, so results of two runs never mix; --overwrite first removes what an
earlier predict wrote there (the files its `predict_outputs.json` lists) and leaves the rest.

Exit status: 0 when at least one image was segmented (unreadable files, truncated ones included,
are reported on stderr, skipped and listed in the summary; a grayscale image is segmented with a
one-line warning, as the model expects colour); 1 when none was (then nothing is written); 2 for
a usage problem (no input given, no checkpoint in the workdir, a missing input path, no image
found).
"""

import dataclasses
import json
import math
import os
import pathlib
import sys
from typing import Iterable, Sequence

from absl import app
from absl import flags
from absl import logging
import cv2
import ml_collections
import numpy as np
import PIL.Image
import tqdm

from wcsegnet_jax import cell_typing
from wcsegnet_jax import cells
from wcsegnet_jax import checkpointing
from wcsegnet_jax import classes
from wcsegnet_jax import config_lib
from wcsegnet_jax import decoding
from wcsegnet_jax import errors
from wcsegnet_jax import fields
from wcsegnet_jax import files
from wcsegnet_jax import logs
from wcsegnet_jax import overlays
from wcsegnet_jax import reports
from wcsegnet_jax import restore
from wcsegnet_jax import scale_estimate
from wcsegnet_jax import segmenter
from wcsegnet_jax import shipped_model
from wcsegnet_jax.data import raw

CSV_COLUMNS = ('file', 'cell', 'x0', 'y0', 'x1', 'y1', 'touches_border', 'predicted_type',
               'confidence', 'review', 'counted', 'exclusion_reason', 'nucleus_area_px',
               'nucleus_area_um2', 'cell_area_px', 'cell_area_um2', 'nc_ratio', 'perimeter_px',
               'perimeter_um', 'circularity', 'solidity', 'nucleus_parts', 'mask_file',
               'field_scale')
DIFFERENTIAL_COLUMNS = ('cell_type', 'count', 'percent')
CELLS_FILE = 'cells.csv'
DIFFERENTIAL_FILE = 'differential.csv'
CONTACT_SHEET_FILE = 'contact_sheet.png'   # every image's overlay, small, for review
OUTPUTS_FILE = 'predict_outputs.json'   # what a run wrote, so --overwrite removes only that
# Stained smears differ by tens of levels between channels; a gray image, JPEG too, by ~0.
GRAY_MEAN_SPREAD = 2.0


@dataclasses.dataclass
class PredictionSummary:
  """What a run did: the images done, and the ones skipped with the reason."""
  done: list[str]
  skipped: list[tuple[str, str]]
  no_cells: list[str] = dataclasses.field(default_factory=list)   # done, but no cell found
  differential: list[dict] = dataclasses.field(default_factory=list)   # cells.differential
  cell_types: tuple[str, ...] = ()   # the types the model tells apart
  not_counted: int = 0   # cells listed in cells.csv but left out of the differential

  def text(self) -> str:
    n = len(self.done) + len(self.skipped)
    line = (f'{n} image{"" if n == 1 else "s"}: {len(self.done)} segmented, '
            f'{len(self.skipped)} skipped')
    if self.skipped:
      line += ': ' + '; '.join(f'{path}: {why}' for path, why in self.skipped)
    if self.no_cells:
      shown = ', '.join(self.no_cells[:5]) + (', ...' if len(self.no_cells) > 5 else '')
      line += (f'\nno cell found in {len(self.no_cells)} image'
               f'{"" if len(self.no_cells) == 1 else "s"}: {shown}')
    if self.differential:
      *types, total = self.differential
      line += f'\n{total["count"]} cell{"" if total["count"] == 1 else "s"}' + (
          ': ' + ', '.join(f'{r["cell_type"]} {r["count"]} ({r["percent"]:.1f}%)' for r in types)
          if total['count'] else '')
    if self.not_counted:
      line += (f'\n{self.not_counted} more object{"" if self.not_counted == 1 else "s"} not '
               f'counted (cut by the image border, or too small or misshapen for a cell): in '
               f'{CELLS_FILE} with counted=0 and the reason; --count_all_cells counts them')
    if unknown := [t for t in classes.ALL_CELL_TYPES if t not in self.cell_types]:
      line += (f'\nthe model types {", ".join(self.cell_types)} only: a cell of another type '
               f'({", ".join(unknown)}) is counted as the nearest of these')
    return line


def load_workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config training saved in `workdir` (lists where the config had tuples)."""
  workdir = pathlib.Path(workdir).expanduser().resolve()
  path = workdir / checkpointing.CONFIG_FILE
  try:
    saved = checkpointing.load_saved_config(workdir)
  except ValueError as e:
    raise checkpointing.CheckpointError(f'{path} is not a readable config: {e}') from None
  if saved is None:
    raise checkpointing.CheckpointError(
        f'{path} does not exist: {workdir} is not a training workdir (train first with '
        f'--workdir={workdir}, or point --workdir at one)')
  return ml_collections.ConfigDict(config_lib.with_defaults(saved))


def list_images(inputs: Sequence[str], exclude: Iterable[pathlib.Path] = ()
                ) -> list[pathlib.Path]:
  """Image files named, plus the images of the folders named (sorted, not recursive), but
  not `exclude` (an earlier predict's outputs, when the output folder is an input too) nor the
  masks and overlays an earlier predict wrote into a folder named (its OUTPUTS_FILE lists
  them), which are left out with a line saying so."""
  paths, skip, subfolders = [], {p.resolve() for p in exclude}, []
  for given in inputs:
    path = pathlib.Path(given).expanduser()
    if path.is_dir():
      images = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in raw.IMAGE_SUFFIXES]
      if odd := sorted(p for p in path.iterdir() if not p.is_file() and not p.is_dir()):
        print(f'{shown(path)}: left out {len(odd)} entries that are not files: '
              + ', '.join(f'{shown(p.name)} ({_kind(p)})' for p in odd[:5])
              + (', ...' if len(odd) > 5 else ''), file=sys.stderr)
      theirs = {p.resolve() for p in _earlier_outputs(path)} - skip
      if left_out := [p for p in images if p.resolve() in theirs]:
        print(f'{shown(path)}: left out {len(left_out)} images an earlier predict wrote there '
              f'(masks, overlays and its contact sheet, listed in its {OUTPUTS_FILE})',
              file=sys.stderr)
      found = sorted(p for p in images if p.resolve() not in skip | theirs)
      _refuse_image_mask_pairs(path, found)
      paths += found
      subfolders += [p for p in path.iterdir() if p.is_dir()]
    elif path.is_file():
      paths.append(path)
    else:
      raise raw.DataError(f'{path}: no such file or folder')
  if not paths:
    hint = (f'; subfolders are not searched: name them, e.g. {sorted(subfolders)[0]}'
            if subfolders else '')
    raise raw.DataError(f'no image ({", ".join(raw.IMAGE_SUFFIXES)}) in {", ".join(inputs)}'
                        + hint)
  return paths


def _kind(path: pathlib.Path) -> str:
  """What a folder entry that is neither a file nor a folder is."""
  if path.is_symlink():
    try:
      path.resolve(strict=True)
    except RuntimeError:
      return 'a symbolic link in a loop'
    except OSError:
      return 'a broken symbolic link'
  return 'a FIFO' if path.is_fifo() else 'a socket' if path.is_socket() else 'a special file'


def _refuse_image_mask_pairs(folder: pathlib.Path, found: Sequence[pathlib.Path]) -> None:
  """A folder of NNN.bmp (.jpg, .tif) images beside NNN.png masks, the WBC layout as
  `raw.list_wbc_records` reads it, would have its masks segmented as images: a usage error
  naming the folder, not 80 gray 'images'."""
  image_stems = {p.stem for p in found if p.suffix.lower() != '.png'}
  masks = [p for p in found if p.suffix.lower() == '.png' and p.stem in image_stems]
  if masks:
    raise raw.DataError(
        f'{folder} holds {len(masks)} .png file(s) named like an image beside them (e.g. '
        f'{masks[0].name}): the WBC layout, whose .png files are masks; give the images '
        f'themselves, e.g. "{folder}"/*.bmp')


def probs_at_size(probs: np.ndarray, height: int, width: int) -> np.ndarray:
  """Class probabilities (S, S, C) resized bilinearly to (height, width, C)."""
  if probs.shape[:2] == (height, width):
    return probs
  return cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)


def cell_row(file: str, mask_file: str, index: int, cell: cells.Cell,
             class_names: Sequence[str], pixel_size_um: float | None,
             exclusion_reason: str = '', counted: bool = True) -> dict:
  """One cells.csv row: where the cell is, its voted type and confidence, whether the
  differential counts it (and why not: `cells.not_counted_reasons`), its sizes and nucleus
  measurements (areas and lengths in micrometres too with `pixel_size_um`)."""
  m = cell.nucleus
  um = lambda v, power: '' if pixel_size_um is None or v is None else (
      f'{v * pixel_size_um**power:.4f}')
  x0, y0, x1, y1 = cell.bbox
  return {
      'file': file, 'cell': index, 'x0': x0, 'y0': y0, 'x1': x1, 'y1': y1,
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
      'perimeter_px': f"{m['perimeter_px']:.2f}",
      'perimeter_um': um(m['perimeter_px'], 1),
      'circularity': f"{m['circularity']:.4f}",
      'solidity': f"{m['solidity']:.4f}",
      'nucleus_parts': m['nucleus_parts'],
      'mask_file': mask_file,
  }


def image_output_names(stem: str) -> tuple[str, str]:
  """The mask and overlay file names of one image."""
  return f'{stem}_mask.png', f'{stem}_overlay.png'


def write_image_outputs(output: pathlib.Path, stem: str, path: pathlib.Path, image: np.ndarray,
                        probs: np.ndarray, pixel_size_um: float | None,
                        table: classes.ClassTable, cell_rules: cells.CellRules,
                        decode: str, retype=None, uncertain_below: float = 0.0
                        ) -> tuple[list[dict], list[int]]:
  """Writes one image's mask (at its own size) and overlay (`overlays.draw_cells`); returns its
  cells.csv rows and the class ids of the cells the differential counts. `cell_rules` are those
  for the image's own pixel scale; `retype` (the model's cell typer, if it has one) types the
  cells found, and their nuclei are drawn in its types. A cell typed with a (calibrated)
  confidence below `uncertain_below` is flagged for review and counted as UNCERTAIN, as a
  technologist sets a cell aside for a second look."""
  probs = probs_at_size(probs, *image.shape[:2])
  pred_map = decoding.decode(probs, table, decode).astype(np.uint8)
  mask_file, overlay_file = image_output_names(stem)
  found, labels = cells.find_cells(pred_map, probs, table, cell_rules)
  if retype is not None and found:
    found = retype(found)
    pred_map = cell_typing.recoloured(pred_map, labels, found, table.nucleus_ids)
  files.write_bytes_atomic(output / mask_file, reports.encode_png(table.colorize(pred_map)))
  reasons = [cells.not_counted_reasons(cell, cell_rules) for cell in found]
  counted = [cell_rules.count_excluded or not why for why in reasons]
  review = [cell.confidence < uncertain_below for cell in found]
  drawn = [overlays.DrawnCell(k, cell.class_id, table.names[cell.class_id] + '?' * doubt,
                              cell.confidence, count)
           for k, (cell, count, doubt) in enumerate(zip(found, counted, review), start=1)]
  files.write_bytes_atomic(output / overlay_file,
                           reports.encode_png(overlays.draw_cells(image, labels, drawn, table)))
  rows = [cell_row(shown(path), mask_file, k, cell, table.names, pixel_size_um, why, count)
          for k, (cell, why, count) in enumerate(zip(found, reasons, counted), start=1)]
  for row, doubt in zip(rows, review):
    row['review'] = int(doubt)
  return rows, [cells.UNCERTAIN if doubt else cell.class_id
                for cell, count, doubt in zip(found, counted, review) if count]


def write_contact_sheet(output: pathlib.Path, overlay_files: Sequence[str],
                        table: classes.ClassTable) -> None:
  """CONTACT_SHEET_FILE: the overlays written, small and captioned, one image for review."""
  tiles = [(name.removesuffix('_overlay.png'), overlays.thumbnail(
      overlays.without_legend(overlays.read_rgb(output / name), table))) for name in overlay_files]
  files.write_bytes_atomic(output / CONTACT_SHEET_FILE,
                           reports.encode_png(overlays.contact_sheet(tiles, table)))


def looks_gray(image: np.ndarray) -> bool:
  """Whether an RGB image carries (almost) no colour: on average its channels differ by less
  than GRAY_MEAN_SPREAD levels, as in a grayscale file or one saved with three equal channels."""
  spread = image.max(-1).astype(np.int16) - image.min(-1)
  return float(spread.mean()) < GRAY_MEAN_SPREAD


def _has_alpha(path: pathlib.Path) -> bool:
  """Whether an image file has an alpha channel (its header, as PIL reads it)."""
  try:
    with PIL.Image.open(path) as image:
      return image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La')
  except (OSError, ValueError, SyntaxError):
    return False


def read_input(path: pathlib.Path) -> np.ndarray:
  """An input image as RGB (a DataError if unreadable); warns, on one line, when it is gray:
  the model learnt from stained colour smears and tends to find no nucleus in a gray image."""
  image = raw.read_rgb(path)
  if _has_alpha(path):
    tqdm.tqdm.write(f'warning: {shown(path)}: its alpha (transparency) channel is ignored: '
                    f'transparent pixels are segmented by their colour', file=sys.stderr)
  if looks_gray(image):
    tqdm.tqdm.write(f'warning: {shown(path)}: a grayscale image; the model expects colour '
                    f'images of stained blood smears, so it may find no nucleus', file=sys.stderr)
  return image


def _earlier_outputs(output: pathlib.Path) -> list[pathlib.Path]:
  """The files an earlier predict listed in `output`'s OUTPUTS_FILE (plain names only)."""
  listing = output / OUTPUTS_FILE
  if not listing.is_file():
    return []
  try:
    names = json.loads(listing.read_text())['files']
  except (ValueError, KeyError, TypeError) as e:
    raise raw.DataError(f'{listing}: not a readable list of earlier outputs ({e}); remove '
                        f'the folder by hand or choose another --output') from None
  safe = [n for n in names if isinstance(n, str) and n and pathlib.Path(n).name == n]
  return [output / n for n in safe + [CELLS_FILE, DIFFERENTIAL_FILE, CONTACT_SHEET_FILE,
                                      OUTPUTS_FILE]]


def output_names(paths: Sequence[pathlib.Path]) -> list[str]:
  """The files a run on `paths` writes (the stems as `predict_files` gives them)."""
  used = set()
  stems = [_unique_stem(path, used) for path in paths]
  return [name for stem in stems for name in image_output_names(stem)] + [
      CELLS_FILE, DIFFERENTIAL_FILE, CONTACT_SHEET_FILE, OUTPUTS_FILE]


def prepare_output(output: str | pathlib.Path, overwrite: bool,
                   planned: Sequence[str] = ()) -> pathlib.Path:
  """The output folder, created; one holding files is refused unless `overwrite`, which first
  removes what an earlier predict wrote there, so two runs' results never mix, and refuses to
  replace any other file of the `planned` names (the user's, not ours)."""
  output = pathlib.Path(output).expanduser()
  if output.exists() and not output.is_dir():
    raise raw.DataError(f'--output={output} is a file, not a folder')
  if (above := next((p for p in output.parents if p.exists()), None)) and not above.is_dir():
    raise raw.DataError(f'--output={output} runs through {above}, a file, not a folder')
  present = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
  if present and not overwrite:
    shown = ', '.join(present[:3]) + (', ...' if len(present) > 3 else '')
    raise raw.DataError(
        f'--output={output} already holds {len(present)} files ({shown}); give a new or empty '
        f'folder, or --overwrite to replace the results of an earlier predict there')
  earlier = {p.name for p in _earlier_outputs(output)} if present else set()
  theirs = [name for name in planned if (output / name).exists() and name not in earlier]
  if theirs:   # checked before anything is removed: a refusal leaves the folder as it was
    raise raw.DataError(
        f'--output={output} holds {", ".join(theirs[:3])}, which no earlier predict wrote and '
        f'this one would replace; move it away or choose another --output')
  try:
    for name in earlier:
      (output / name).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    probe = output / f'.write_test.{os.getpid()}'   # a read-only mount passes os.access
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise errors.WriteError(f'--output={output} cannot be written ({e.strerror or e}); choose '
                            f'another folder') from None
  return output


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


# File names hold 255 bytes: an output's temporary name (files.py) adds '.', '.<pid>.tmp'.
MAX_STEM_BYTES = 255 - len('._99999_overlay.png.9999999.tmp')


def _unique_stem(path: pathlib.Path, used: set[str]) -> str:
  """The stem of an image's outputs: its own, as valid UTF-8 (a byte of another encoding
  becomes '_'), numbered when another image has it."""
  own = path.stem.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace').replace(
      '\ufffd', '_')
  # Shortened to fit the file system with its suffixes (cells.csv links image and outputs).
  own = own.encode('utf-8')[:MAX_STEM_BYTES].decode('utf-8', 'ignore')
  stem, k = own, 2
  while stem in used:
    stem, k = f'{own}_{k}', k + 1
  used.add(stem)
  return stem


def shown(text) -> str:
  """A path (or message) as text that can be printed and written as UTF-8: a file name in
  another encoding (caf\\xe9.png from a Windows archive) keeps its odd bytes as \\xNN."""
  return str(text).encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


# Outputs are full-size class probabilities (H x W x C float32) and maps: a 50-megapixel image
# needs ~1 GB for a 4-class model, and a field's probabilities are resized back to the image's
# own size whatever --field_scale, beside the field at that scale. Larger ones are refused.
MAX_OUTPUT_PIXELS = 50_000_000
# A cell crop is about square; a strip 8 times longer than wide is none (1-pixel-high strips were
# stretched 120 times and counted as cells).
MAX_CROP_ASPECT = 8


def check_image_size(path: pathlib.Path, image: np.ndarray, field_scale: float | None
                     ) -> np.ndarray:
  """The image, or a DataError when what is held for it (its outputs at its own size, the field
  at --field_scale) would be too large."""
  height, width = image.shape[:2]
  if field_scale is None and max(height, width) > MAX_CROP_ASPECT * min(height, width):
    raise raw.DataError(
        f'{path}: {width}x{height} pixels is no cell crop: resized whole to the square the model '
        f'reads, it would be stretched {max(height, width) / min(height, width):.0f} times one '
        f'way; crop it around a cell, or give --field_scale to read it as a field')
  scale = 1.0 if field_scale is None else field_scale
  scaled = round(height * scale) * round(width * scale)
  pixels = max(scaled, height * width)
  if pixels > MAX_OUTPUT_PIXELS:
    at = f' at --field_scale={field_scale}' if scaled > height * width else ''
    raise raw.DataError(
        f'{path}: {width}x{height} pixels{at} is {pixels / 1e6:.0f} megapixels of output, over '
        f'the {MAX_OUTPUT_PIXELS / 1e6:.0f} this command holds in memory (masks and class '
        f'probabilities are at the image\'s own size, whatever --field_scale); cut the image '
        f'into parts' + (' or use a smaller --field_scale' if at else ''))
  return image


AUTO_SCALE = 'auto'


def parse_field_scale(value: float | str | None) -> float | str | None:
  """--field_scale as given: None (crops), AUTO_SCALE, or a positive number."""
  if value is None or str(value).strip().lower() == AUTO_SCALE:
    return None if value is None else AUTO_SCALE
  try:
    scale = float(value)
  except ValueError:
    scale = math.nan
  if not (math.isfinite(scale) and scale > 0):
    raise raw.DataError(f'--field_scale={value} must be a positive number (e.g. 1.0 for fields '
                        f'at the training crops\' scale) or {AUTO_SCALE}')
  return scale


def estimated_scale(segment: segmenter.Segmenter, path: pathlib.Path, image: np.ndarray) -> float:
  """The field's scale estimated from its nuclei, or FALLBACK_SCALE with a warning naming it."""
  scale = scale_estimate.estimate_scale(segment, image, segment.config.eval.decode)
  if scale is None:
    tqdm.tqdm.write(f'warning: {path}: no nucleus found at any scale, so its scale cannot be '
                    f'estimated; segmented at --field_scale={scale_estimate.FALLBACK_SCALE}',
                    file=sys.stderr)
    return scale_estimate.FALLBACK_SCALE
  return scale


# Training crops are 120 and 300 pixels; an image far larger is likely a field of many cells.
FIELD_HINT_SIDE = 1000


def _field_hint(image: np.ndarray, field_scale: float | None) -> str:
  """For an image that found no cell: a hint when it looks like a field read as one crop."""
  height, width = image.shape[:2]
  if field_scale is not None or max(height, width) <= FIELD_HINT_SIDE:
    return ''
  return (f' (at {width}x{height} it may be a field of many cells, squashed here into one '
          f'crop: try --field_scale=1.0, or 0.4 for cells of ~300 pixels)')


def _crop_retype(typer, segment: segmenter.Segmenter, image: np.ndarray):
  """Types the cells of a crop on the crop as the model saw it (resized whole), or None."""
  if typer is None:
    return None
  height, width = image.shape[:2]
  seen = raw.resize_image(image, segment.size)
  return lambda found: typer.retyped(found, seen, (segment.size / width, segment.size / height))


def _field_retype(typer, segment: segmenter.Segmenter, image: np.ndarray, scale: float):
  """Types the cells of a field on the field at the training scale, or None."""
  if typer is None:
    return None
  seen = fields.resize_field(image, scale)
  return lambda found: typer.retyped(found, seen, (scale, scale))


def predict_files(config: ml_collections.ConfigDict, variables: dict,
                  paths: Sequence[pathlib.Path], output: str | pathlib.Path,
                  batch_size: int = 16, tta: bool = False, pixel_size_um: float | None = None,
                  progress: bool = False, model_source: str = '',
                  field_scale: float | str | None = None,
                  cell_rules: cells.CellRules = cells.CellRules(),
                  typer: cell_typing.CellTyper | None = None,
                  backend: str = 'jax', onnx_file: str | None = None,
                  threads: int = 0) -> PredictionSummary:
  """Segments `paths` with `variables`; writes masks, overlays, cells.csv and differential.csv
  into `output`.

  Without `field_scale` each image is one crop, resized whole to the training size; with it,
  a field resized by `field_scale` (AUTO_SCALE: estimated per image, `scale_estimate.py`) and
  segmented in tiles of the training size (`fields.segment_field`). `cell_rules` are at the
  training scale. With `typer`, cells are typed by it (`cell_typing.CellTyper`), not by the
  vote of their nucleus pixels. Each batch's files are listed in OUTPUTS_FILE before they are written, so
  even an interrupted run leaves a complete list for --overwrite.
  """
  output = pathlib.Path(output).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  table = classes.table_of(config.data)
  listing = {'model': model_source, 'cell_types': list(table.cell_types), 'tta': bool(tta),
             'complete': False, 'files': []}
  files.write_json_atomic(output / OUTPUTS_FILE, listing)
  size = int(config.data.image_size)
  if field_scale is None:   # crops are batched across images, a field's tiles per image
    batch_size = max(1, min(batch_size, len(paths)))
  if backend == 'jax' and not onnx_file:
    segment = segmenter.Segmenter(config, variables, tta, batch_size)
  else:   # ONNX Runtime (the export extra): docs/export.md
    from wcsegnet_jax.export import onnx_backend   # pylint: disable=g-import-not-at-top
    segment = onnx_backend.segmenter_for(config, variables, tta, batch_size, backend, onnx_file,
                                         threads, model_source)
  summary = PredictionSummary([], [], cell_types=table.cell_types)
  rows, class_ids, used_stems = [], [], set()
  bar = tqdm.tqdm(total=len(paths), unit='image', disable=not progress)
  for chunk in _chunks(list(paths), 1 if field_scale else batch_size):
    images = []
    for path in chunk:
      try:
        # A field whose scale is yet to be estimated is checked at its own size.
        images.append((path, check_image_size(path, read_input(path),
                                              1.0 if field_scale == AUTO_SCALE else field_scale)))
      except raw.DataError as e:
        tqdm.tqdm.write(f'skipped: {shown(e)}', file=sys.stderr)
        summary.skipped.append((shown(path), shown(e).removeprefix(f'{shown(path)}: ')))
        bar.update(1)
    if not images:
      continue
    if field_scale is None:
      probs = segment.crops([image for _, image in images])
      # A training pixel spans sqrt(h * w) / size pixels of the crop (its mean side ratio).
      scales = [math.sqrt(image.shape[0] * image.shape[1]) / size for _, image in images]
      retypes = [_crop_retype(typer, segment, image) for _, image in images]
    else:
      (path, image), = images
      scale = field_scale if field_scale != AUTO_SCALE else estimated_scale(segment, path, image)
      probs = [segment.field(image, scale)]
      scales = [1.0 / scale]
      retypes = [_field_retype(typer, segment, image, scale)]
    stems = [_unique_stem(path, used_stems) for path, _ in images]
    listing['files'] += [name for stem in stems for name in image_output_names(stem)]
    files.write_json_atomic(output / OUTPUTS_FILE, listing)
    for stem, (path, image), image_probs, scale, retype in zip(stems, images, probs, scales,
                                                               retypes):
      image_rows, image_ids = write_image_outputs(
          output, stem, path, image, image_probs, pixel_size_um, table,
          cell_rules.scaled(scale), config.eval.decode, retype,
          typer.uncertain_below if typer is not None else 0.0)
      for row in image_rows:
        row['field_scale'] = f'{1.0 / scale:.4f}'
      if not image_rows:
        tqdm.tqdm.write(f'{shown(path)}: no cell found' + _field_hint(image, field_scale),
                        file=sys.stderr)
        summary.no_cells.append(shown(path))
      rows += image_rows
      class_ids += image_ids
      summary.done.append(shown(path))
      bar.update(1)
  bar.close()
  if not summary.done:   # every input skipped: no empty results to block a corrected rerun
    (output / OUTPUTS_FILE).unlink()
    return summary
  summary.differential = cells.differential(
      class_ids, [table.names[i] for i in table.nucleus_ids], table.nucleus_ids,
      with_uncertain=typer is not None)
  summary.not_counted = sum(1 for r in rows if not r['counted'])
  files.write_csv_atomic(output / CELLS_FILE, CSV_COLUMNS,
                         [[r[k] for k in CSV_COLUMNS] for r in rows])
  files.write_csv_atomic(output / DIFFERENTIAL_FILE, DIFFERENTIAL_COLUMNS,
                         [[r['cell_type'], r['count'], f"{r['percent']:.2f}"]
                          for r in summary.differential])
  write_contact_sheet(output, [n for n in listing['files'] if n.endswith('_overlay.png')], table)
  files.write_json_atomic(output / OUTPUTS_FILE, {**listing, 'complete': True})
  return summary


MAX_PIXEL_SIZE_UM = 1000.0   # a millimetre per pixel: larger ones are typing slips (and overflow)


def run(workdir: str | None, output: str, inputs: Sequence[str], checkpoint: str | None = None,
        batch_size: int = 16, tta: bool | None = None, pixel_size_um: float | None = None,
        overwrite: bool = False, field_scale: float | str | None = None,
        cell_rules: cells.CellRules = cells.CellRules(),
        model: str | None = None, backend: str = 'jax', onnx_file: str | None = None,
        threads: int = 0) -> PredictionSummary:
  """The command's work, callable from Python: config, checkpoint, then the images.

  With `checkpoint='pretrained'`, or with neither a `workdir` nor a checkpoint named, the
  model shipped in the package; a checkpoint path needs no `workdir`; with a `workdir` and no
  checkpoint named, its config's `eval.checkpoint` (the latest, unless changed).
  """
  if pixel_size_um is not None and not (math.isfinite(pixel_size_um)
                                        and 0 < pixel_size_um <= MAX_PIXEL_SIZE_UM):
    raise raw.DataError(f'--pixel_size_um={pixel_size_um} must be a positive number of '
                        f'micrometres per pixel, at most {MAX_PIXEL_SIZE_UM:g} (a smear under a '
                        f'microscope has 0.05 to 1)')
  field_scale = parse_field_scale(field_scale)
  for name, value in dataclasses.asdict(cell_rules).items():
    if not (math.isfinite(value) and value >= 0):
      raise raw.DataError(f'--cell_{name}={value} must be a number >= 0')
  which = None if checkpoint is None else str(checkpoint).strip()
  if not workdir and (which in ('best', 'latest') or (which or '').isdigit()):
    raise checkpointing.CheckpointError(
        f'--checkpoint={which} names a checkpoint of a workdir: pass --workdir too')
  output_dir = pathlib.Path(output).expanduser()
  earlier = _earlier_outputs(output_dir) if output_dir.is_dir() else []
  paths = list_images(inputs, exclude=earlier)
  # Before the model loads: a bad --output fails at once.
  prepare_output(output_dir, overwrite, output_names(paths))
  config, variables, source, folder = load_model(workdir, which, model)
  typer = cell_typing.load_typer(folder, config, variables, batch_size)
  logging.info('Segmenting %d image(s) with %s%s.', len(paths), source,
               ', cells typed by its cell typer' if typer else '')
  progress = len(paths) > 1 and any(pathlib.Path(i).expanduser().is_dir() for i in inputs)
  tta = bool(config.eval.tta) if tta is None else tta   # None: as the model was evaluated
  try:
    return predict_files(config, variables, paths, output, batch_size, tta, pixel_size_um,
                         progress, model_source=source, field_scale=field_scale,
                         cell_rules=cell_rules, typer=typer, backend=backend,
                         onnx_file=onnx_file, threads=threads)
  except OSError as e:   # a full disk, a folder made read-only meanwhile
    raise errors.WriteError(f'writing to --output={output} failed ({e.strerror or e}); what was '
                            f'written is listed in its {OUTPUTS_FILE}') from None


def load_model(workdir: str | None, which: str | None = None, model: str | None = None):
  """(config, variables, description, folder) of the model to predict with: a shipped one
  (`model`, a name or a model folder; `which` 'pretrained[:NAME]'; or neither a workdir nor a
  checkpoint: the default), else a training checkpoint (`_workdir_model`); the folder is where
  its cell typer would be (`cell_typing.load_typer`)."""
  if model is not None and (workdir or which):
    raise checkpointing.CheckpointError(
        f'--model={model} names a shipped model: give it, or --workdir/--checkpoint, not both')
  directory = restore.pretrained_dir(which) if which else None
  if directory is None and not workdir and which is None:
    directory = shipped_model.model_dir(model)
  if directory is not None:
    config = shipped_model.load_config(directory)
    variables = shipped_model.load_variables(config, directory)
    return config, variables, f'the pretrained model in {directory}', directory
  return _workdir_model(workdir, which)


def _workdir_model(workdir: str | None, which: str | None):
  """(config, variables, description, workdir) of a training checkpoint: `which` of `workdir`,
  or a checkpoint path; None is the workdir config's `eval.checkpoint`."""
  if which is None:
    which = str(load_workdir_config(workdir).eval.checkpoint).strip()
  ckpt_workdir, _ = restore.resolve_checkpoint(workdir or '.', which)
  workdir = workdir or ckpt_workdir
  config_dir = (ckpt_workdir if (ckpt_workdir / checkpointing.CONFIG_FILE).is_file()
                else workdir)
  config = load_workdir_config(config_dir)
  variables, step = restore.load_variables(config, workdir, which)
  return config, variables, f'step {step} of {ckpt_workdir}', ckpt_workdir


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so that importing this module
  beside `wcsegnet_jax.main` (which has --workdir and --checkpoint too) is no flag clash."""
  flags.DEFINE_string('workdir', None, 'Training workdir: config.json and checkpoints/. '
                      'Without it, the pretrained model shipped in the package is used.')
  flags.DEFINE_string('output', None, 'Folder for masks, overlays and cells.csv (created).')
  flags.DEFINE_string('checkpoint', None, "'latest', 'best', a step, a checkpoint path, or "
                      "'pretrained'. Default: the shipped model without --workdir; with one, "
                      "its config's eval.checkpoint (latest: 'best' was picked by test Dice).")
  flags.DEFINE_float('pixel_size_um', None, 'Micrometres per pixel of the input images; adds '
                     'areas and perimeters in micrometres to cells.csv.')
  flags.DEFINE_integer('batch_size', 16, 'Images per forward pass.', lower_bound=1)
  flags.DEFINE_bool('tta', None, 'Average the predictions over the four flips (and the quarter '
                    "turns where the model's config has eval.tta_rotations). Default: as the "
                    "model's config (eval.tta; on for the pretrained model).")
  flags.DEFINE_string('field_scale', None, 'Treat each image as a field of many cells: resize '
                      'it by this factor to the training scale and segment it in overlapping '
                      'tiles (1.0 for fields at the Jiangxi crops\' scale; 0.4 at the '
                      'CellaVision crops\'), or "auto": estimated per image from its nuclei '
                      '(written to cells.csv). Without it, each image is one cell crop, resized '
                      'whole.')
  defaults = cells.CellRules()
  flags.DEFINE_float('cell_merge_gap_px', defaults.merge_gap_px, 'Nucleus parts at most this '
                     'far apart (pixels at the training scale) are one cell: a neutrophil\'s '
                     'lobes. See wcsegnet_jax/cells.py.')
  flags.DEFINE_float('cell_split_radius_px', defaults.split_radius_px, 'A cell region holding '
                     'two nucleus parts this deep (pixels from the nucleus edge, at the training '
                     'scale) is split in two touching cells; 0 never splits.')
  flags.DEFINE_float('cell_min_nucleus_px', defaults.min_nucleus_px, 'Cells with a smaller '
                     'nucleus (pixels at the training scale) are dropped as specks.')
  flags.DEFINE_bool('overwrite', False, 'Allow an --output folder that holds files: the '
                    'results an earlier predict wrote there are removed first.')
  flags.DEFINE_string('model', None, 'A shipped model by name (%s; default %s) or a model '
                      'folder (tools/build_pretrained.py --output), instead of --workdir.'
                      % (', '.join(shipped_model.MODEL_NAMES), shipped_model.DEFAULT_MODEL))
  flags.DEFINE_bool('count_all_cells', False, 'Count in differential.csv the cells cut by the '
                    'image border and the objects too small or misshapen for a cell as well '
                    '(cells.csv lists them either way, with the reason).')
  flags.DEFINE_enum('backend', 'jax', ['jax', 'onnx'], 'What runs the network: jax (XLA), or '
                    'onnx (ONNX Runtime; the export extra, docs/export.md). Same outputs.')
  flags.DEFINE_string('onnx_file', None, "With --backend=onnx: the model's model.onnx from "
                      'tools/export_model.py (default: exported in memory first).')
  flags.DEFINE_integer('threads', 0, 'With --backend=onnx: ONNX Runtime threads (0: one per '
                       'core).', lower_bound=0)
  flags.mark_flags_as_required(['output'])


def main(argv):
  inputs = argv[1:]
  if not inputs:
    print('error: give at least one image file or folder (see --help)', file=sys.stderr)
    sys.exit(2)
  logs.quiet_library_logs()
  with errors.user_errors_as_messages():
    rules = cells.CellRules(FLAGS.cell_merge_gap_px, FLAGS.cell_split_radius_px,
                            FLAGS.cell_min_nucleus_px, count_excluded=FLAGS.count_all_cells)
    summary = run(FLAGS.workdir, FLAGS.output, inputs, FLAGS.checkpoint, FLAGS.batch_size,
                  FLAGS.tta, FLAGS.pixel_size_um, FLAGS.overwrite, FLAGS.field_scale, rules,
                  FLAGS.model, FLAGS.backend, FLAGS.onnx_file, FLAGS.threads)
  print(summary.text())
  if not summary.done:
    print('nothing segmented, nothing written', file=sys.stderr)
    sys.exit(1)
  output = pathlib.Path(FLAGS.output)
  print(f'wrote masks and overlays, {output / CELLS_FILE}, {output / DIFFERENTIAL_FILE} and '
        f'{output / CONTACT_SHEET_FILE} (every overlay, small, for review)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
