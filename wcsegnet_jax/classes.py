"""Class ids, names, colours and the WBC Image Dataset's cell-type codes: one source of truth."""

import numpy as np

# Per-pixel classes of the label map (WCSegNet, Nasser et al. 2025): the nucleus pixels of a cell
# take the cell's type; cytoplasm and everything else is background.
CLASS_NAMES = ('background', 'neutrophil', 'basophil', 'lymphocyte')
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND = 0
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}

# Display colours as in the paper's figures: black, red, green, blue.
CLASS_COLORS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)

# Cell-type codes of `Class Labels of Dataset N.csv` (Zheng et al., Micron 2018).
CSV_CELL_TYPES = {1: 'neutrophil', 2: 'lymphocyte', 3: 'monocyte', 4: 'eosinophil', 5: 'basophil'}
ALL_CELL_TYPES = tuple(CSV_CELL_TYPES.values())
# The paper keeps three types; the other two have no class id in the 4-class label map.
DEFAULT_CELL_TYPES = ('neutrophil', 'basophil', 'lymphocyte')


def cell_type_to_class_id(cell_type: str) -> int:
  """The label-map class id of a cell type, or a clear error for a type without one."""
  if cell_type not in CLASS_ID or cell_type == 'background':
    raise ValueError(
        f'cell type {cell_type!r} has no class in the label map; classes are {CLASS_NAMES[1:]}')
  return CLASS_ID[cell_type]


def colorize(label_map: np.ndarray) -> np.ndarray:
  """An RGB image (..., 3) uint8 showing a label map in the class colours."""
  return CLASS_COLORS[np.clip(label_map, 0, NUM_CLASSES - 1)]


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """The RGB image with nucleus pixels blended towards their class colour (background kept)."""
  colored = colorize(label_map).astype(np.float32)
  blended = (1 - alpha) * image.astype(np.float32) + alpha * colored
  return np.where(label_map[..., None] > 0, blended, image).round().astype(np.uint8)
