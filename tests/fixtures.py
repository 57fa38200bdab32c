"""Generators of small fake raw datasets in the layouts wcsegnet_jax reads.

`make_wbc_raw` writes the WBC Image Dataset's layout (Zheng et al. 2018) exactly as the public copy
has it: `Dataset 1/NNN.bmp` + `NNN.png`, `Dataset 2/...` at another size, and
`Class Labels of Dataset N.csv` with CRLF line endings and ids without the files' leading zeros.
`make_folder_raw` writes the plain `folder` layout (images/, masks/, optional labels.csv).

Every generator returns a manifest of what it wrote, so tests can compute the expected examples
(counts, types, label maps) without reading the files back through the code under test.
"""

import dataclasses
import pathlib
import shutil

import cv2
import numpy as np
from PIL import Image

from wcsegnet_jax.core import classes

SUBSET_DIRS = {'jiangxi': 'Dataset 1', 'cellavision': 'Dataset 2'}
CSV_HEADER = 'image ID,class label'
# Stray gray levels as some of the real masks carry them: each snaps to a level of 0/128/255.
STRAY_BACKGROUND = (3, 50)  # 50 is farther than the tolerance (40) from every level: "off"
STRAY_CYTOPLASM = 130
STRAY_NUCLEUS = 250
STRAY_FRACTION = 0.003  # of the background pixels; well under the 1% allowed off-level


@dataclasses.dataclass(frozen=True)
class FakeImage:
  """One generated image: its file id, CSV id and code, and the clean mask (0/128/255)."""

  file_id: str  # '007' (the file name's stem)
  csv_id: str  # '7'
  type_code: int  # 1..5 as in the CSV
  mask: np.ndarray  # clean mask at the written size, before stray pixels
  image: np.ndarray  # the RGB image written (as BGR, the way image files store it)

  @property
  def cell_type(self) -> str:
    return classes.CSV_CELL_TYPES[self.type_code]

  def label_map(self) -> np.ndarray:
    """The label map the reader should make (before any resize): nucleus -> the type's class."""
    class_id = classes.CLASS_ID.get(self.cell_type, 0)
    return np.where(self.mask == 255, class_id, 0).astype(np.uint8)


def cell_mask(rng: np.random.Generator, size: int) -> np.ndarray:
  """A 0/128/255 mask: a cytoplasm disk holding a nucleus disk, at a random spot."""
  mask = np.zeros((size, size), np.uint8)
  r = int(rng.integers(size // 6, size // 4))
  cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, size=2))
  cv2.circle(mask, (cx, cy), r, 128, thickness=-1)
  nr = max(2, r // 2)
  nx = cx + int(rng.integers(-(r - nr) // 2, (r - nr) // 2 + 1))
  ny = cy + int(rng.integers(-(r - nr) // 2, (r - nr) // 2 + 1))
  cv2.circle(mask, (nx, ny), nr, 255, thickness=-1)
  return mask


def cell_image(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
  """An RGB uint8 picture of the mask: pink background, pale cytoplasm, purple nucleus, noise."""
  palette = np.array([[230, 190, 200], [210, 200, 230], [110, 50, 150]], np.int16)
  image = palette[np.searchsorted([0, 128, 255], mask)]
  image = image + rng.integers(-12, 13, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def add_stray_levels(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
  """Sprinkles stray gray levels that snap back to the clean mask's level at each pixel."""
  noisy = mask.copy()
  for level, stray in ((0, STRAY_BACKGROUND), (128, (STRAY_CYTOPLASM,)), (255, (STRAY_NUCLEUS,))):
    ys, xs = np.nonzero(mask == level)
    n = max(1, int(STRAY_FRACTION * mask.size / len(stray)))
    for value in stray:
      pick = rng.choice(len(ys), size=min(n, len(ys)), replace=False)
      noisy[ys[pick], xs[pick]] = value
  return noisy


def write_rgb(path: pathlib.Path, image: np.ndarray) -> None:
  if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
    raise OSError(f'could not write {path}')


def write_gray(path: pathlib.Path, mask: np.ndarray) -> None:
  if not cv2.imwrite(str(path), mask):
    raise OSError(f'could not write {path}')


def write_csv(path: pathlib.Path, rows, header: bool = True) -> None:
  """`image ID,class label` rows with CRLF line endings, as the dataset's CSVs have."""
  lines = ([CSV_HEADER] if header else []) + [f'{i},{label}' for i, label in rows]
  path.write_bytes(('\r\n'.join(lines) + '\r\n').encode())


def write_palette_png(path: pathlib.Path, indices: np.ndarray, palette: np.ndarray) -> None:
  """A palette (P-mode) PNG: `indices` (H, W) uint8 into `palette` (N, 3) RGB colours."""
  h, w = indices.shape
  image = Image.frombytes('P', (w, h), np.ascontiguousarray(indices, np.uint8).tobytes())
  image.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
  image.save(path)


def write_with_orientation(path: pathlib.Path, stored: np.ndarray, orientation: int) -> None:
  """An image (JPEG or PNG by suffix) whose pixels are `stored` (RGB, or gray) as a camera lays
  them, with the EXIF orientation that tells viewers how to turn them."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  kwargs = {'quality': 95} if path.suffix.lower() in ('.jpg', '.jpeg') else {}
  Image.fromarray(stored).save(path, exif=exif, **kwargs)


def truncate(path: pathlib.Path, keep: float = 0.5) -> pathlib.Path:
  """Cuts a file to its first `keep` fraction, like an interrupted copy or download."""
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep)])
  return path


def damage_checkpoint(step_dir: pathlib.Path, how: str) -> None:
  """Damages an orbax step as a full disk, a failed copy or a careless cleanup leaves it:
  'truncated' or 'deleted' data files, a 'no_metadata' state, or 'no_state' at all."""
  state = pathlib.Path(step_dir) / 'state'
  data_files = [p for p in state.glob('d/*') if p.is_file()]
  if how == 'truncated':
    for path in data_files:
      truncate(path)
  elif how == 'deleted':
    for path in data_files:
      path.unlink()
  elif how == 'no_metadata':
    (state / '_METADATA').unlink()
  elif how == 'no_state':
    shutil.rmtree(state)
  else:
    raise ValueError(how)


def make_wbc_raw(
  root, n_per_type=None, size1: int = 120, size2: int = 300, seed: int = 0
) -> dict[str, list[FakeImage]]:
  """Writes both subsets of the WBC layout under `root`; returns {source: [FakeImage]}.

  `n_per_type` maps CSV codes (1 neutrophil, 2 lymphocyte, 3 monocyte, 4 eosinophil, 5 basophil)
  to image counts per subset. Ids have gaps (like the public copy, which lacks some) and start at
  1; files are zero-padded to three digits, CSV ids are not.
  """
  n_per_type = {1: 5, 2: 5, 5: 2, 3: 1} if n_per_type is None else n_per_type
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  manifest = {}
  for source, size in (('jiangxi', size1), ('cellavision', size2)):
    folder = root / SUBSET_DIRS[source]
    folder.mkdir(parents=True, exist_ok=True)
    codes = [code for code, n in sorted(n_per_type.items()) for _ in range(n)]
    codes = [codes[i] for i in rng.permutation(len(codes))]
    images = []
    for k, code in enumerate(codes):
      number = 1 + 2 * k + int(k % 3 == 0)  # 2, 3, 5, 8, 9, 11, 14, ...: ids with gaps
      mask = cell_mask(rng, size)
      fake = FakeImage(f'{number:03d}', str(number), code, mask, cell_image(rng, mask))
      write_rgb(folder / f'{fake.file_id}.bmp', fake.image)
      write_gray(folder / f'{fake.file_id}.png', add_stray_levels(rng, fake.mask))
      images.append(fake)
    write_csv(
      root / f'Class Labels of {SUBSET_DIRS[source]}.csv', [(f.csv_id, f.type_code) for f in images]
    )
    manifest[source] = images
  return manifest


def make_folder_raw(
  root, with_labels_csv: bool = True, size: int = 100, n_per_type=None, seed: int = 1
) -> list[FakeImage]:
  """Writes the `folder` layout: images/*.png, masks/*.png and (optionally) labels.csv.

  With labels.csv, masks follow the WBC scheme and one row names its type by name instead of by
  code (the reader accepts both). Without it, masks are label maps of class ids (0 and the
  image's one class); types without a class id (monocyte, eosinophil) are then left out.
  `size` differs from 120 so that reading must resize.
  """
  n_per_type = {1: 3, 2: 3, 5: 2, 4: 1} if n_per_type is None else n_per_type
  if not with_labels_csv:
    n_per_type = {
      c: n for c, n in n_per_type.items() if classes.CSV_CELL_TYPES[c] in classes.CLASS_ID
    }
  root = pathlib.Path(root)
  (root / 'images').mkdir(parents=True, exist_ok=True)
  (root / 'masks').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  images = []
  for k, code in enumerate(c for c, n in sorted(n_per_type.items()) for _ in range(n)):
    mask = cell_mask(rng, size)
    fake = FakeImage(f'cell_{k:02d}', f'cell_{k:02d}', code, mask, cell_image(rng, mask))
    write_rgb(root / 'images' / f'{fake.file_id}.png', fake.image)
    if with_labels_csv:
      write_gray(root / 'masks' / f'{fake.file_id}.png', fake.mask)
    else:
      write_gray(root / 'masks' / f'{fake.file_id}.png', fake.label_map())
    images.append(fake)
  if with_labels_csv:
    rows = [(f.csv_id, f.type_code) for f in images]
    rows[0] = (rows[0][0], images[0].cell_type)  # a type name instead of a code
    write_csv(root / 'labels.csv', rows)
  return images
