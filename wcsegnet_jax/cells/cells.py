"""Cells of a predicted label map: one connected cell region per cell, its type, size and shape.

Pure functions of the model's `classes.ClassTable` (its nucleus ids and cytoplasm id), so they
serve any model's classes; a cell's type is voted as evaluation votes an image's
(`metrics.predicted_cell_type`).

How a map becomes cells (`label_cells`):
1. Groups. With a cytoplasm class, a group is an 8-connected region of nucleus or cytoplasm
   pixels: a neutrophil's lobes are one cell because its cytoplasm joins them. Without one (the
   shipped model), a group is the nucleus pixels that lie within `merge_gap_px` of each other
   (components of the nucleus dilated by half the gap): the lobes of one neutrophil, which on
   the WBC data's masks are at most ~14 pixels apart at the training scale (120x120 crops), join.
2. Touching cells. A group is split when it holds two or more nucleus *cores*: 8-connected parts
   of the nucleus at least `split_radius_px` from the nucleus edge (distance transform), i.e.
   parts at least twice that thick. Two round nuclei touching (or nearer than the merge gap)
   have one core each, joined by at most a thin neck; a neutrophil's lobes are thinner than a
   core, so they stay one cell. Each pixel of a split group goes to its nearest core (Euclidean).
   Limits: two cells whose nuclei overlap without a neck stay one cell; a nucleus with two
   thick ends and a narrow waist can be split in two; two lobed nuclei nearer than the merge gap
   with no core each stay one cell. Without a cytoplasm class the gap between two cells' nuclei
   is the evidence: nuclei farther apart than `merge_gap_px` are always two cells.
3. Specks. Cells with fewer than `min_nucleus_px` nucleus pixels are dropped (a fragment of a
   nucleus or a false positive), as are cytoplasm regions with no nucleus and cytoplasm farther
   than `max_cytoplasm_px` from every nucleus.
4. Counting. A cell cut by the image border, or one too small, too far from round
   (circularity) or too ragged (solidity) for a nucleus (`CellRules`' counting thresholds), is
   kept and listed but left out of a differential: `not_counted_reasons` says why.
The rules' lengths and areas are at the training scale; `CellRules.scaled` maps them to a map of
another scale (a crop resized back to its own size, a field of another magnification).

Per cell (`measure_cells`): bounding box, whether it touches the image border (a cell cut by
the border: its size and shape are partial), type by vote of its nucleus pixels (the nucleus
class with the most pixels, ties to the smaller id), confidence (the mean probability of that
type over its nucleus pixels), nucleus area, cell area and N:C ratio (nucleus area / cytoplasm
area, the haematologist's nucleus-to-cytoplasm ratio; both None without a cytoplasm class), and
the nucleus measurements of `morphometry.py`.
"""

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage

from wcsegnet_jax.cells import morphometry
from wcsegnet_jax.core import classes
from wcsegnet_jax.model import metrics

EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class CellRules:
  """How nucleus pixels group into cells (see the module doc), in pixels of the training scale.

  Defaults from the WBC Image Dataset's 348 true nucleus masks of three types at 120x120:
  neutrophil lobes lie <= 14 px apart; a whole nucleus is >= ~560 px (399 over the 320 masks of
  all five types, CellaVision's shrunk from 300); a lobe is at most ~10 px from edge to centre,
  a lymphocyte's nucleus ~20. With them, 347 of the 348 masks are one cell each (one monocyte
  splits); two true lymphocyte nuclei set touching split into two cells in 13-18 of 20 pairs,
  two touching neutrophil nuclei (no core) in 0 of 20: without a cytoplasm class, the gap
  between nuclei is the only evidence for those.
  """

  merge_gap_px: float = 14.0
  split_radius_px: float = 16.0
  # Specks: the smallest of the WBC Image Dataset's 320 true nuclei at 120x120 has 399 px; 280 is
  # 0.7 of it, what a field scale estimated 15% too small leaves of it. On another lab's fields
  # (bccd_fields, `--field_scale=auto`) every found white cell's nucleus has >= 1,355 px at the
  # training scale, and the platelet clumps and stain strands taken for cells 161-226 px.
  min_nucleus_px: float = 280.0
  # With a cytoplasm class: a cell's cytoplasm lies at most this far from its nucleus. On the
  # WBC Image Dataset's 320 true masks at 120x120 the farthest cytoplasm pixel is 52 px from
  # the nucleus (99th percentile 41-46 px).
  max_cytoplasm_px: float = 60.0
  # Which cells a differential counts (`not_counted_reasons`): not those cut by the image border
  # (type and size partial), nor implausible objects. From the 320 true nucleus masks of the
  # WBC Image Dataset at 120x120 (CellaVision's shrunk from 300): the smallest nucleus has
  # 399 px, the least circular 0.185, the least solid 0.487 (lobed neutrophils, an eosinophil);
  # each threshold lies well below, so only fragments and slivers fall under them. (The nucleus
  # area rule acts where min_nucleus_px is set below it.)
  min_counted_nucleus_px: float = 200.0
  min_circularity: float = 0.1
  min_solidity: float = 0.3
  count_excluded: bool = False  # count those cells too (listed as not countable all the same)

  def scaled(self, factor: float) -> 'CellRules':
    """The rules for a map whose pixels are `factor` times smaller than the training scale's
    (a map enlarged by `factor`): lengths times factor, areas times factor**2; shape ratios
    unchanged."""
    return dataclasses.replace(
      self,
      merge_gap_px=self.merge_gap_px * factor,
      max_cytoplasm_px=self.max_cytoplasm_px * factor,
      split_radius_px=self.split_radius_px * factor,
      min_nucleus_px=self.min_nucleus_px * factor**2,
      min_counted_nucleus_px=self.min_counted_nucleus_px * factor**2,
    )


@dataclasses.dataclass
class Cell:
  """One cell found in a label map. bbox is (x0, y0, x1, y1), x1 and y1 exclusive."""

  bbox: tuple[int, int, int, int]
  centre: tuple[float, float]  # (x, y) of the nucleus centroid
  touches_border: bool
  class_id: int
  confidence: float
  nucleus_area_px: int
  cell_area_px: int | None  # None without a cytoplasm class
  nc_ratio: float | None  # nucleus / cytoplasm area; None without cytoplasm or if 0
  nucleus: dict  # morphometry.nucleus_measurements of its nucleus


def _split_by_cores(group: np.ndarray, nucleus: np.ndarray, radius: float) -> np.ndarray:
  """Labels (1..k) of the pixels of one group (a boolean crop), split by its nucleus cores;
  all 1 when it has fewer than two cores."""
  labels = group.astype(np.int32)
  if radius <= 0:
    return labels
  # Padded: past the group's box there is none of its nucleus (edt measures to zeros only).
  depth = ndimage.distance_transform_edt(np.pad(nucleus, 1))[1:-1, 1:-1]
  cores, n_cores = ndimage.label(depth >= radius, EIGHT_CONNECTED)
  if n_cores < 2:
    return labels
  _, (iy, ix) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
  return np.where(group, cores[iy, ix], 0).astype(np.int32)


def label_cells(
  pred_map: np.ndarray, nucleus_ids: Sequence[int], cytoplasm_id: int | None, rules: CellRules
) -> tuple[np.ndarray, int]:
  """(labels, n): an int32 (H, W) map of cell k = 1..n over each cell's pixels (its nucleus
  pixels, and its cytoplasm where the model has that class), 0 elsewhere; see the module doc."""
  pred_map = np.asarray(pred_map)
  nucleus = np.isin(pred_map, list(nucleus_ids))
  if cytoplasm_id is None:
    # A dilation by a disk of half the gap, as a distance threshold: the same pixels, in time
    # independent of the gap (a large field at a small --field_scale has a large one).
    region = (
      ndimage.distance_transform_edt(~nucleus) <= rules.merge_gap_px / 2
      if nucleus.any()
      else nucleus
    )
    member = nucleus
  else:
    # Cytoplasm farther from every nucleus than a cell's reaches is not a cell's: without the
    # bound, cytoplasm-coloured pixels running across red cells join a white cell to far-off
    # debris, and its box (where a lab's box is matched) and area go with them.
    reach = (
      ndimage.distance_transform_edt(~nucleus) <= rules.max_cytoplasm_px
      if nucleus.any()
      else nucleus
    )
    region = member = nucleus | ((pred_map == cytoplasm_id) & reach)
  groups, _ = ndimage.label(region, EIGHT_CONNECTED)
  labels, n = np.zeros(pred_map.shape, np.int32), 0
  for index, box in enumerate(ndimage.find_objects(groups), start=1):
    if box is None:
      continue
    group = (groups[box] == index) & member[box]
    parts = _split_by_cores(group, group & nucleus[box], rules.split_radius_px)
    for part in range(1, int(parts.max()) + 1):
      pixels = parts == part
      if (pixels & nucleus[box]).sum() >= max(rules.min_nucleus_px, 1):
        n += 1
        labels[box][pixels] = n
  return labels, n


def measure_cells(
  pred_map: np.ndarray, probs: np.ndarray | None, labels: np.ndarray, table: classes.ClassTable
) -> list[Cell]:
  """The `Cell` of each label of `labels` (as `label_cells` gives), in label order."""
  pred_map = np.asarray(pred_map)
  nucleus = np.isin(pred_map, table.nucleus_ids)
  height, width = pred_map.shape
  cells = []
  for index, box in enumerate(ndimage.find_objects(labels), start=1):
    if box is None:
      continue
    own = labels[box] == index
    own_nucleus = own & nucleus[box]
    class_id, confidence = metrics.predicted_cell_type(
      np.where(own, pred_map[box], classes.BACKGROUND), None if probs is None else probs[box], table
    )
    n_nucleus = int(own_nucleus.sum())
    ys, xs = np.nonzero(own_nucleus)
    y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
    cell_area = nc_ratio = None
    if table.cytoplasm:
      cell_area = int(own.sum())
      nc_ratio = n_nucleus / (cell_area - n_nucleus) if cell_area > n_nucleus else None
    cells.append(
      Cell(
        bbox=(x0, y0, x1, y1),
        centre=(float(xs.mean()) + x0, float(ys.mean()) + y0),
        touches_border=bool(x0 == 0 or y0 == 0 or x1 == width or y1 == height),
        class_id=class_id,
        confidence=confidence,
        nucleus_area_px=n_nucleus,
        cell_area_px=cell_area,
        nc_ratio=nc_ratio,
        nucleus=morphometry.nucleus_measurements(own_nucleus),
      )
    )
  return cells


def find_cells(
  pred_map: np.ndarray, probs: np.ndarray | None, table: classes.ClassTable, rules: CellRules
) -> tuple[list[Cell], np.ndarray]:
  """The cells of a predicted map (`label_cells`, then `measure_cells`), and their labels."""
  labels, _ = label_cells(pred_map, table.nucleus_ids, table.cytoplasm_id, rules)
  return measure_cells(pred_map, probs, labels, table), labels


def not_counted_reasons(cell: Cell, rules: CellRules) -> str:
  """'' for a cell a differential counts; else why not ('cut by the image border', 'nucleus
  120 px < 200', 'circularity 0.03 < 0.1', 'solidity ...'), joined by '; '. `rules` at the
  map's own scale (`CellRules.scaled`)."""
  m, reasons = cell.nucleus, []
  if cell.touches_border:
    reasons.append('cut by the image border')
  if m['area_px'] < rules.min_counted_nucleus_px:
    reasons.append(f'nucleus {m["area_px"]} px < {rules.min_counted_nucleus_px:.0f}')
  if m['circularity'] < rules.min_circularity:
    reasons.append(f'circularity {m["circularity"]:.2f} < {rules.min_circularity:g}')
  if m['solidity'] < rules.min_solidity:
    reasons.append(f'solidity {m["solidity"]:.2f} < {rules.min_solidity:g}')
  return '; '.join(reasons)


UNCERTAIN = -1  # the class id a differential counts a cell flagged for review under


def differential(
  class_ids: Sequence[int],
  type_names: Sequence[str],
  type_ids: Sequence[int],
  with_uncertain: bool = False,
) -> list[dict]:
  """A differential count: per type (in `type_ids` order, named by `type_names`), how many of
  the cells' `class_ids` it has and its percentage of them; with `with_uncertain`, an
  'uncertain' row (cells of class id UNCERTAIN: typed, but flagged for review); a final
  'total' row."""
  names, ids = list(type_names), [int(i) for i in type_ids]
  if with_uncertain:
    names, ids = names + ['uncertain'], ids + [UNCERTAIN]
  counts = {i: 0 for i in ids}
  for class_id in class_ids:
    counts[int(class_id)] += 1
  total = sum(counts.values())
  rows = [
    {'cell_type': name, 'count': counts[i], 'percent': 100.0 * counts[i] / total if total else 0.0}
    for name, i in zip(names, ids)
  ]
  return rows + [{'cell_type': 'total', 'count': total, 'percent': 100.0 if total else 0.0}]
