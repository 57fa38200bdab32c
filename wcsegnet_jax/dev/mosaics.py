"""Fields with a known answer: mosaics of real single-cell crops, and per-cell scoring of them.

A mosaic is a grid of crops pasted on a canvas of the crops' median border colour (the smear's
background), `gap` pixels apart, so its true cell list (type, nucleus bounding box) is the
crops'. `score` matches predicted cells (predict's cells.csv rows) to the true ones by
bounding-box overlap (nucleus boxes; whole-cell boxes for a model with a cytoplasm class, whose
cells.csv boxes span the whole cell) and reports the counting and typing accuracy.
"""

import csv
import dataclasses
import json
import pathlib
from typing import Sequence

import numpy as np

from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import label_maps
from wcsegnet_jax.data import records as records_lib

TRUTH_FILE = 'mosaics.json'
MIN_IOU = 0.3  # a predicted cell matches a true one when their boxes overlap this much


@dataclasses.dataclass
class Crop:
  """One real crop: its id, RGB image, true nucleus and whole-cell masks and cell type."""

  name: str
  image: np.ndarray
  nucleus: np.ndarray
  cell_type: str
  cell: np.ndarray | None = None  # nucleus and cytoplasm


def load_crops(
  raw_dir: pathlib.Path,
  subset: str,
  ids: Sequence[str] | None = None,
  cell_types: Sequence[str] | None = None,
) -> list[Crop]:
  """The crops of a WBC Image Dataset subset ('jiangxi' | 'cellavision'), only `ids` and
  `cell_types` when given; the nucleus is the mask's 255 level, the cell its 128 and 255."""
  records = records_lib.list_wbc_records(pathlib.Path(raw_dir), subset)
  crops = []
  for r in records:
    if (ids is not None and r.file_id not in ids) or (
      cell_types is not None and r.cell_type not in cell_types
    ):
      continue
    mask = image_files.read_mask(r.mask_path)
    crops.append(
      Crop(
        f'{subset}/{r.file_id}',
        image_files.read_rgb(r.image_path),
        mask > (128 + label_maps.NUCLEUS_LEVEL) // 2,
        r.cell_type,
        mask > 128 // 2,
      )
    )
  return crops


def _box(mask: np.ndarray) -> list[int]:
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def build_mosaic(crops: Sequence[Crop], columns: int, gap: int) -> tuple[np.ndarray, list[dict]]:
  """(image, truth): the crops in rows of `columns`, `gap` pixels apart and from the edge, on
  their median border colour; truth lists each crop's name, type and nucleus box (x0, y0, x1,
  y1 exclusive) in the mosaic. Crops may differ in size: each takes a cell of the largest."""
  cell_h = max(c.image.shape[0] for c in crops)
  cell_w = max(c.image.shape[1] for c in crops)
  rows = -(-len(crops) // columns)
  border = np.concatenate(
    [np.concatenate([c.image[0], c.image[-1], c.image[:, 0], c.image[:, -1]]) for c in crops]
  )
  canvas = np.empty((gap + rows * (cell_h + gap), gap + columns * (cell_w + gap), 3), np.uint8)
  canvas[:] = np.median(border, axis=0).astype(np.uint8)
  truth = []
  for k, crop in enumerate(crops):
    y = gap + (k // columns) * (cell_h + gap) + (cell_h - crop.image.shape[0]) // 2
    x = gap + (k % columns) * (cell_w + gap) + (cell_w - crop.image.shape[1]) // 2
    canvas[y : y + crop.image.shape[0], x : x + crop.image.shape[1]] = crop.image
    shift = lambda box: [box[0] + x, box[1] + y, box[2] + x, box[3] + y]
    cell = crop.cell if crop.cell is not None else crop.nucleus
    truth.append(
      {
        'name': crop.name,
        'cell_type': crop.cell_type,
        'bbox': shift(_box(crop.nucleus)),
        'cell_bbox': shift(_box(cell)),
      }
    )
  return canvas, truth


def write_mosaics(
  crops: Sequence[Crop],
  out: pathlib.Path,
  n_mosaics: int,
  per_mosaic: int,
  columns: int,
  gap: int,
  seed: int,
) -> list[dict]:
  """Writes `n_mosaics` mosaics of `per_mosaic` distinct crops each (drawn with `seed`) as
  mosaic_NN.png, and their truth as TRUTH_FILE; returns the truth."""
  if len(crops) < per_mosaic:
    raise errors.DataError(f'{len(crops)} crops cannot fill a mosaic of {per_mosaic}')
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  listing = []
  for m in range(n_mosaics):
    picked = [crops[i] for i in rng.choice(len(crops), per_mosaic, replace=False)]
    image, truth = build_mosaic(picked, columns, gap)
    name = f'mosaic_{m:02d}.png'
    files.write_bytes_atomic(out / name, image_files.encode_png(image))
    listing.append({'file': name, 'size': list(image.shape[:2]), 'cells': truth})
  files.write_json_atomic(out / TRUTH_FILE, listing)
  return listing


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  if w <= 0 or h <= 0:
    return 0.0
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return w * h / (area(a) + area(b) - w * h)


def match(
  truth: Sequence[dict], predicted: Sequence[dict], min_iou: float = MIN_IOU
) -> list[tuple[int, int]]:
  """Pairs (true index, predicted index), greedily by the largest nucleus-box IoU >= min_iou,
  each cell in at most one pair. Items have 'bbox' (x0, y0, x1, y1)."""
  pairs = sorted(
    (
      (_iou(t['bbox'], p['bbox']), i, j)
      for i, t in enumerate(truth)
      for j, p in enumerate(predicted)
    ),
    reverse=True,
  )
  used_t, used_p, out = set(), set(), []
  for iou, i, j in pairs:
    if iou >= min_iou and i not in used_t and j not in used_p:
      used_t.add(i)
      used_p.add(j)
      out.append((i, j))
  return sorted(out)


def score(truth_listing: Sequence[dict], predicted_rows: Sequence[dict]) -> dict:
  """Counting and typing accuracy of predicted cells (cells.csv rows: file, x0..y1,
  predicted_type) against the mosaics' truth (as `write_mosaics` returns). Rows with a cell
  area come from a model with a cytoplasm class: their boxes span whole cells and are matched
  to the true whole-cell boxes."""
  whole_cells = any(row.get('cell_area_px') not in (None, '') for row in predicted_rows)
  box_key = 'cell_bbox' if whole_cells else 'bbox'
  by_file = {}
  for row in predicted_rows:
    by_file.setdefault(pathlib.Path(row['file']).name, []).append(
      {'bbox': [int(row[k]) for k in ('x0', 'y0', 'x1', 'y1')], 'cell_type': row['predicted_type']}
    )
  n_true = n_pred = n_matched = n_typed = exact = abs_error = 0
  true_counts, pred_counts, per_mosaic = {}, {}, []
  for mosaic in truth_listing:
    truth, predicted = mosaic['cells'], by_file.get(mosaic['file'], [])
    pairs = match([{'bbox': t.get(box_key, t['bbox'])} for t in truth], predicted)
    typed = sum(truth[i]['cell_type'] == predicted[j]['cell_type'] for i, j in pairs)
    n_true, n_pred, n_matched, n_typed = (
      n_true + len(truth),
      n_pred + len(predicted),
      n_matched + len(pairs),
      n_typed + typed,
    )
    exact += len(predicted) == len(truth)
    abs_error += abs(len(predicted) - len(truth))
    for cell in truth:
      true_counts[cell['cell_type']] = true_counts.get(cell['cell_type'], 0) + 1
    for cell in predicted:
      pred_counts[cell['cell_type']] = pred_counts.get(cell['cell_type'], 0) + 1
    per_mosaic.append(
      {
        'file': mosaic['file'],
        'true': len(truth),
        'predicted': len(predicted),
        'matched': len(pairs),
        'typed': typed,
      }
    )
  n_mosaics = len(truth_listing)
  return {
    'boxes': 'whole cell' if whole_cells else 'nucleus',
    'mosaics': n_mosaics,
    'true_cells': n_true,
    'predicted_cells': n_pred,
    'matched_cells': n_matched,
    'exact_count_fraction': exact / n_mosaics if n_mosaics else 0.0,
    'mean_abs_count_error': abs_error / n_mosaics if n_mosaics else 0.0,
    'recall': n_matched / n_true if n_true else 0.0,
    'precision': n_matched / n_pred if n_pred else 0.0,
    'type_accuracy_of_matched': n_typed / n_matched if n_matched else 0.0,
    'true_differential': true_counts,
    'predicted_differential': pred_counts,
    'per_mosaic': per_mosaic,
  }


def read_cells_csv(path: pathlib.Path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def read_truth(folder: pathlib.Path) -> list[dict]:
  return json.loads((pathlib.Path(folder) / TRUTH_FILE).read_text())
