"""Image files: each file's structure checked before it is decoded, RGB and mask reading, resizing,
PNG encoding.

OpenCV decodes a truncated JPEG into a half-gray image (libjpeg only prints a bare warning), so
each file's structure is checked before it is decoded: truncated or corrupt files are rejected
with the file named (a `DataError`), and the decoders never print about them.
"""

import contextlib
import io
import os
import pathlib
import struct
import sys
import tempfile
import threading
from typing import Iterator
import zlib

import cv2
import numpy as np
from PIL import Image  # palette label maps (OpenCV expands them) and EXIF orientation

from wcsegnet_jax.core import errors

DataError = errors.DataError
IMAGE_SUFFIXES = ('.bmp', '.png', '.jpg', '.jpeg', '.tif', '.tiff')


def _jpeg_problem(data: bytes) -> str | None:
  """Walks the JPEG's segments and scan data to its end-of-image marker (FFD9); None if found.

  Stray bytes between markers are skipped as libjpeg does; data after the end is allowed.
  """
  pos = 2  # after SOI
  while (pos := data.find(b'\xff', pos)) >= 0 and pos + 1 < len(data):
    marker = data[pos + 1]
    if marker == 0xD9:
      return None
    if marker == 0xFF:  # fill byte
      pos += 1
    elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # stuffing, TEM, restart: no length
      pos += 2
    else:  # a segment: skip its payload
      pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], 'big')
  return f'truncated JPEG (no end-of-image marker FFD9 in its {len(data)} bytes)'


def _png_problem(data: bytes) -> str | None:
  """Walks the PNG's chunks to IEND, checking each one's CRC; None if all is well."""
  pos, view = 8, memoryview(data)
  while pos + 12 <= len(data):
    length, tag = struct.unpack('>I4s', data[pos : pos + 8])
    end = pos + 12 + length
    if end > len(data):
      break
    if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], 'big'):
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
  if header_size == 12:  # OS/2 core header
    width, height, _, bpp = struct.unpack('<HHHH', data[18:26])
    compression = 0
  else:
    width, height, _, bpp, compression = struct.unpack('<iiHHI', data[18:34])
  if compression not in (0, 3, 6):  # run-length coded: the header does not give the size
    return None
  need = offset + (abs(width) * bpp + 31) // 32 * 4 * abs(height)
  if len(data) < need:
    return f'truncated or corrupt BMP ({len(data)} bytes where its header needs {need})'
  return None


# Formats checked by their leading bytes, not their suffix. TIFF is left to libtiff, which
# rejects truncated strips itself.
_STRUCTURE_CHECKS = (
  (b'\xff\xd8', _jpeg_problem),
  (b'\x89PNG\r\n\x1a\n', _png_problem),
  (b'BM', _bmp_problem),
)


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
    except OSError:  # no stderr at all (a daemon): nothing to capture
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
  other = [line for line in lines if line not in corrupt]  # not ours to hide
  if other and sys.stderr is not None and not sys.stderr.closed:
    print('\n'.join(other), file=sys.stderr)
  if corrupt:
    raise DataError(f'{path}: not a readable {what} file: corrupt JPEG ({corrupt[0].strip()})')
  if array is None:
    raise DataError(f'{path}: not a readable {what} file (truncated, corrupt or not an image)')
  return as_viewed(array, data)


# EXIF orientation (tag 0x0112) -> what turns the stored pixels into the picture viewers show.
_EXIF_ORIENTATION = 0x0112


_TURN = {
  2: lambda a: a[:, ::-1],
  3: lambda a: a[::-1, ::-1],
  4: lambda a: a[::-1],
  5: lambda a: a.swapaxes(0, 1),
  6: lambda a: np.rot90(a, -1),
  7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
  8: lambda a: np.rot90(a, 1),
}


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
  except (OSError, ValueError, SyntaxError):  # a format PIL does not read: OpenCV decides
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


def _interpolation(height: int, width: int, size: int) -> int:
  """Area when shrinking, bilinear when enlarging: both keep pixel centres where they were."""
  return cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """To size x size: area when shrinking, bilinear when enlarging (training and prediction)."""
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  return cv2.resize(image, (size, size), interpolation=_interpolation(h, w, size))


def encode_png(rgb: np.ndarray) -> bytes:
  """An (H, W, 3) uint8 RGB array as PNG bytes."""
  ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise OSError(f'could not encode a {rgb.shape} {rgb.dtype} array as PNG')
  return png.tobytes()
