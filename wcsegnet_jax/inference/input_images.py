"""predict's inputs: the image files named and the images of the folders named (without the
outputs an earlier predict wrote there), each read as RGB and checked before it is segmented."""

import pathlib
import sys
from typing import Iterable, Sequence

import numpy as np
import PIL.Image
import tqdm

from wcsegnet_jax.core import errors
from wcsegnet_jax.data import image_files
from wcsegnet_jax.inference import output_folder

DataError = errors.DataError


# Stained smears differ by tens of levels between channels; a gray image, JPEG too, by ~0.
GRAY_MEAN_SPREAD = 2.0


def list_images(inputs: Sequence[str], exclude: Iterable[pathlib.Path] = ()) -> list[pathlib.Path]:
  """Image files named, plus the images of the folders named (sorted, not recursive), but
  not `exclude` (an earlier predict's outputs, when the output folder is an input too) nor the
  masks and overlays an earlier predict wrote into a folder named (its OUTPUTS_FILE lists
  them), which are left out with a line saying so."""
  paths, skip, subfolders = [], {p.resolve() for p in exclude}, []
  for given in inputs:
    path = pathlib.Path(given).expanduser()
    if path.is_dir():
      images = [
        p for p in path.iterdir() if p.is_file() and p.suffix.lower() in image_files.IMAGE_SUFFIXES
      ]
      if odd := sorted(p for p in path.iterdir() if not p.is_file() and not p.is_dir()):
        print(
          f'{shown(path)}: left out {len(odd)} entries that are not files: '
          + ', '.join(f'{shown(p.name)} ({_kind(p)})' for p in odd[:5])
          + (', ...' if len(odd) > 5 else ''),
          file=sys.stderr,
        )
      theirs = {p.resolve() for p in output_folder.earlier_outputs(path)} - skip
      if left_out := [p for p in images if p.resolve() in theirs]:
        print(
          f'{shown(path)}: left out {len(left_out)} images an earlier predict wrote there '
          f'(masks, overlays and its contact sheet, listed in its '
          f'{output_folder.OUTPUTS_FILE})',
          file=sys.stderr,
        )
      found = sorted(p for p in images if p.resolve() not in skip | theirs)
      _refuse_image_mask_pairs(path, found)
      paths += found
      subfolders += [p for p in path.iterdir() if p.is_dir()]
    elif path.is_file():
      paths.append(path)
    else:
      raise DataError(f'{path}: no such file or folder')
  if not paths:
    hint = (
      f'; subfolders are not searched: name them, e.g. {sorted(subfolders)[0]}'
      if subfolders
      else ''
    )
    raise DataError(
      f'no image ({", ".join(image_files.IMAGE_SUFFIXES)}) in {", ".join(inputs)}' + hint
    )
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
  `records.list_wbc_records` reads it, would have its masks segmented as images: a usage error
  naming the folder, not 80 gray 'images'."""
  image_stems = {p.stem for p in found if p.suffix.lower() != '.png'}
  masks = [p for p in found if p.suffix.lower() == '.png' and p.stem in image_stems]
  if masks:
    raise DataError(
      f'{folder} holds {len(masks)} .png file(s) named like an image beside them (e.g. '
      f'{masks[0].name}): the WBC layout, whose .png files are masks; give the images '
      f'themselves, e.g. "{folder}"/*.bmp'
    )


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
  image = image_files.read_rgb(path)
  if _has_alpha(path):
    tqdm.tqdm.write(
      f'warning: {shown(path)}: its alpha (transparency) channel is ignored: '
      f'transparent pixels are segmented by their colour',
      file=sys.stderr,
    )
  if looks_gray(image):
    tqdm.tqdm.write(
      f'warning: {shown(path)}: a grayscale image; the model expects colour '
      f'images of stained blood smears, so it may find no nucleus',
      file=sys.stderr,
    )
  return image


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


def check_image_size(
  path: pathlib.Path, image: np.ndarray, field_scale: float | None
) -> np.ndarray:
  """The image, or a DataError when what is held for it (its outputs at its own size, the field
  at --field_scale) would be too large."""
  height, width = image.shape[:2]
  if field_scale is None and max(height, width) > MAX_CROP_ASPECT * min(height, width):
    raise DataError(
      f'{path}: {width}x{height} pixels is no cell crop: resized whole to the square the model '
      f'reads, it would be stretched {max(height, width) / min(height, width):.0f} times one '
      f'way; crop it around a cell, or give --field_scale to read it as a field'
    )
  scale = 1.0 if field_scale is None else field_scale
  scaled = round(height * scale) * round(width * scale)
  pixels = max(scaled, height * width)
  if pixels > MAX_OUTPUT_PIXELS:
    at = f' at --field_scale={field_scale}' if scaled > height * width else ''
    raise DataError(
      f'{path}: {width}x{height} pixels{at} is {pixels / 1e6:.0f} megapixels of output, over '
      f'the {MAX_OUTPUT_PIXELS / 1e6:.0f} this command holds in memory (masks and class '
      f"probabilities are at the image's own size, whatever --field_scale); cut the image "
      f'into parts' + (' or use a smaller --field_scale' if at else '')
    )
  return image
