"""The label map's classes, from config: ids, names, colours; and the dataset's cell-type codes.

One source of truth. `class_table(config.data.cell_types, config.data.cytoplasm)` gives the
classes of a run: 0 background, then one class per configured cell type in config order (their
nucleus pixels take it), then, with `cytoplasm`, a last class for the cytoplasm, so the model
segments whole cells. The paper's config (neutrophil, basophil, lymphocyte; no cytoplasm) gives
the paper's map: 0 background, 1 neutrophil, 2 basophil, 3 lymphocyte.

Colours (PALETTE) are fixed per class name, so a class looks the same whatever else is
configured. Background is black; neutrophil, basophil and lymphocyte keep the paper's red, green
and blue, so our figures match its Figure 7; monocyte and eosinophil take Okabe-Ito colours
(colour-blind safe: sky blue and reddish purple, apart in lightness from the paper's blue and
red), and the cytoplasm a mid gray.
"""

import dataclasses
from typing import Sequence

import numpy as np

from wcsegnet_jax.core import errors

BACKGROUND = 0
CYTOPLASM = 'cytoplasm'

# Cell-type codes of `Class Labels of Dataset N.csv` (Zheng et al., Micron 2018).
CSV_CELL_TYPES = {1: 'neutrophil', 2: 'lymphocyte', 3: 'monocyte', 4: 'eosinophil', 5: 'basophil'}
ALL_CELL_TYPES = tuple(CSV_CELL_TYPES.values())
# The paper keeps three types, in the order of its label map's ids.
DEFAULT_CELL_TYPES = ('neutrophil', 'basophil', 'lymphocyte')

PALETTE = {
  'background': (0, 0, 0),  # black
  'neutrophil': (255, 0, 0),  # red (the paper's)
  'basophil': (0, 255, 0),  # green (the paper's)
  'lymphocyte': (0, 0, 255),  # blue (the paper's)
  'monocyte': (86, 180, 233),  # Okabe-Ito sky blue
  'eosinophil': (204, 121, 167),  # Okabe-Ito reddish purple
  CYTOPLASM: (128, 128, 128),  # mid gray
}


@dataclasses.dataclass(frozen=True)
class ClassTable:
  """The classes of a label map: names[i] is class i; nucleus ids are the cell types' ids."""

  cell_types: tuple[str, ...]
  cytoplasm: bool

  @property
  def names(self) -> tuple[str, ...]:
    return ('background', *self.cell_types) + ((CYTOPLASM,) if self.cytoplasm else ())

  @property
  def num_classes(self) -> int:
    return len(self.names)

  @property
  def nucleus_ids(self) -> tuple[int, ...]:
    """The ids of the cell types (a nucleus pixel takes its cell's type)."""
    return tuple(range(1, 1 + len(self.cell_types)))

  @property
  def cytoplasm_id(self) -> int | None:
    return self.num_classes - 1 if self.cytoplasm else None

  @property
  def type_to_id(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.cell_types, start=1)}

  @property
  def colors(self) -> np.ndarray:
    """(num_classes, 3) uint8 RGB, class i's colour in row i."""
    return np.array([PALETTE[name] for name in self.names], np.uint8)

  def type_id(self, cell_type: str) -> int:
    """The class id of a configured cell type; a clear error for another type."""
    if cell_type not in self.cell_types:
      raise ValueError(
        f'cell type {cell_type!r} has no class in the label map; its cell types '
        f'are {self.cell_types} (config.data.cell_types)'
      )
    return self.cell_types.index(cell_type) + 1

  def name(self, class_id: int) -> str:
    """A class's name, 'none' for background (as cell types: no nucleus found)."""
    return 'none' if class_id == BACKGROUND else self.names[class_id]

  def colorize(self, label_map: np.ndarray) -> np.ndarray:
    """An RGB image (..., 3) uint8 showing a label map in the class colours."""
    return self.colors[np.clip(label_map, 0, self.num_classes - 1)]

  def overlay(self, image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The RGB image with cell pixels blended towards their class colour (background kept)."""
    colored = self.colorize(label_map).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colored
    return np.where(label_map[..., None] > 0, blended, image).round().astype(np.uint8)

  def describe(self) -> str:
    """'0 background, 1 neutrophil, ...': the label map, for messages and docs."""
    return ', '.join(f'{i} {name}' for i, name in enumerate(self.names))


def cell_type_problems(cell_types: Sequence[str]) -> list[str]:
  """What is wrong with a list of cell types (empty when it is a usable one)."""
  cell_types = tuple(cell_types)
  found = []
  unknown = [t for t in cell_types if t not in ALL_CELL_TYPES]
  if unknown:
    found.append(
      f'data.cell_types={cell_types}: {unknown} not a cell type; the types are {ALL_CELL_TYPES}'
    )
  duplicated = sorted({t for t in cell_types if cell_types.count(t) > 1})
  if duplicated:
    found.append(f'data.cell_types={cell_types}: {duplicated} listed twice')
  if not cell_types:
    found.append(f'data.cell_types is empty; name some of {ALL_CELL_TYPES}')
  return found


def class_table(cell_types: Sequence[str], cytoplasm: bool = False) -> ClassTable:
  """The ClassTable of configured cell types (in their order) and cytoplasm; ConfigError for an
  unknown, repeated or empty list of types."""
  found = cell_type_problems(cell_types)
  if found:
    raise errors.ConfigError('; '.join(found))
  return ClassTable(tuple(cell_types), bool(cytoplasm))


def table_of(data_config) -> ClassTable:
  """The ClassTable of a config's data section (config.data)."""
  return class_table(data_config.cell_types, data_config.cytoplasm)


def table_from_names(names: Sequence[str]) -> ClassTable:
  """The ClassTable whose `names` these are (as a metrics.json records them)."""
  names = tuple(names)
  if not names or names[0] != 'background':
    raise ValueError(f'class names {names} do not start with background')
  cytoplasm = names[-1] == CYTOPLASM
  return class_table(names[1 : len(names) - cytoplasm], cytoplasm)


# The paper's classes (configs/base.py); the constants below are its table's, for code and tests
# that handle the paper's four classes only.
PAPER_TABLE = class_table(DEFAULT_CELL_TYPES, cytoplasm=False)
CLASS_NAMES = PAPER_TABLE.names
NUM_CLASSES = PAPER_TABLE.num_classes
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
CLASS_COLORS = PAPER_TABLE.colors
