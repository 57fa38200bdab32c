"""Fine-tuning data from a lab's typed fields: pseudo-labelled crops around each typed cell.

A lab holds fields with typed, boxed white cells and no masks (`data/typed_fields.py`). The
model being fine-tuned supplies the masks: it segments each field at its scale (`data.fields_scale`,
0 = estimated per field, `scale_estimate.py`), and inside each typed box its nucleus pixels take
the lab's type and its cytoplasm pixels stay cytoplasm; everything outside the boxes is
background (the lab typed every white cell of its fields, so anything else found there, a red
cell or a platelet, is not one). Each typed cell gives one crop of the training size centred on
its box, at the training scale, written as the `folder` source's layout (images/, masks/ as
label maps), so fine-tuning trains through the same pipeline, colour step and augmentation as any
run. A cell whose box holds no predicted nucleus is left out and counted: the model gives no
mask to learn its type from.
"""

import json
import pathlib
import shutil

from absl import logging
import cv2
import ml_collections
import numpy as np

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import files
from wcsegnet_jax.data import image_files
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.inference import fields as fields_lib
from wcsegnet_jax.inference import scale_estimate
from wcsegnet_jax.inference import segmenter
from wcsegnet_jax.model import decoding

CROPS_DIR = 'field_crops'
MANIFEST = 'manifest.json'


def window(centre: float, size: int, length: int) -> int:
  """The start of a `size` window centred at `centre`, inside [0, length) where it fits."""
  return int(min(max(round(centre - size / 2), 0), max(length - size, 0)))


def crop(array: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
  """array[y0:y0+size, x0:x0+size], mirrored out where the array is smaller than `size`."""
  part = array[y0 : y0 + size, x0 : x0 + size]
  pad = ((0, size - part.shape[0]), (0, size - part.shape[1])) + ((0, 0),) * (part.ndim - 2)
  return np.pad(part, pad, mode='symmetric') if any(p[1] for p in pad) else part


def pseudo_label_map(
  pred_map: np.ndarray, field: typed_fields.TypedField, scale: float, table: classes.ClassTable
) -> np.ndarray:
  """A label map of the field at `scale`: in each typed box, predicted nucleus pixels take the
  box's type, cytoplasm stays cytoplasm; background elsewhere."""
  nucleus = np.isin(pred_map, table.nucleus_ids)
  out = np.zeros(pred_map.shape, np.uint8)
  for cell in field.cells:
    x0, y0, x1, y1 = (int(round(v * scale)) for v in cell.box)
    box = (slice(y0, y1), slice(x0, x1))
    if table.cytoplasm:
      out[box][pred_map[box] == table.cytoplasm_id] = table.cytoplasm_id
    out[box][nucleus[box]] = table.type_id(cell.cell_type)
  return out


def write_field_crops(
  config: ml_collections.ConfigDict,
  variables: dict,
  fields: list[typed_fields.TypedField],
  out_dir: pathlib.Path,
) -> dict:
  """Writes out_dir/images/ and masks/ (one crop per typed cell); returns the manifest."""
  table = classes.table_of(config.data)
  size = int(config.data.image_size)
  segment = segmenter.Segmenter(config, variables, tta=bool(config.eval.tta))
  scale_of = scale_estimate.scale_function(
    config.data.fields_scale or 'auto', segment, warn=logging.warning
  )
  for sub in ('images', 'masks'):
    (out_dir / sub).mkdir(parents=True, exist_ok=True)
  written, unlabelled = [], []
  for field in fields:
    image = image_files.read_rgb(field.path)
    scale = float(scale_of(image))
    probs = segment.field(image, scale)
    labels = pseudo_label_map(
      decoding.decode(probs, table, config.eval.decode), field, scale, table
    )
    scaled = fields_lib.resize_field(image, scale)
    for k, cell in enumerate(field.cells):
      x0, y0, x1, y1 = (v * scale for v in cell.box)
      left = window((x0 + x1) / 2, size, scaled.shape[1])
      top = window((y0 + y1) / 2, size, scaled.shape[0])
      label_crop = crop(labels, left, top, size)
      name = f'{field.path.stem}_{k}'
      if not (label_crop == table.type_id(cell.cell_type)).any():
        unlabelled.append(name)
        continue
      files.write_bytes_atomic(
        out_dir / 'images' / f'{name}.png', _png(crop(scaled, left, top, size)[..., ::-1])
      )
      files.write_bytes_atomic(out_dir / 'masks' / f'{name}.png', _png(label_crop))
      written.append(
        {'crop': name, 'field': field.path.name, 'type': cell.cell_type, 'scale': scale}
      )
  if unlabelled:
    logging.warning(
      '%d typed cell(s) left out of fine-tuning: the model finds no nucleus in their box (%s)',
      len(unlabelled),
      ', '.join(unlabelled[:5]),
    )
  return {'crops': written, 'left_out': unlabelled}


def _png(array: np.ndarray) -> bytes:
  ok, encoded = cv2.imencode('.png', np.ascontiguousarray(array))
  if not ok:
    raise errors.DataError('could not encode a crop as PNG')
  return encoded.tobytes()


def fields_key(fields: list[typed_fields.TypedField]) -> list:
  """What the crops depend on in the fields folder: names, sizes, times and typed cells."""
  return [
    [
      f.path.name,
      f.path.stat().st_size,
      f.path.stat().st_mtime_ns,
      [[c.cell_type, list(c.box)] for c in f.cells],
    ]
    for f in fields
  ]


def prepare(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, load_initial_variables
) -> ml_collections.ConfigDict:
  """The config to train with: `data.fields_dir`'s typed cells as pseudo-labelled crops in
  `workdir/field_crops/` (written once; reused while the fields and the model are the same),
  read as the `folder` source. `load_initial_variables(config)` gives the model to label with."""
  fields = typed_fields.read_typed_fields(
    config.data.fields_dir, cell_types=tuple(config.data.cell_types)
  )
  out_dir = workdir / CROPS_DIR
  key = {
    'fields': fields_key(fields),
    'init_from': str(config.train.init_from),
    'fields_scale': float(config.data.fields_scale),
  }
  manifest_path = out_dir / MANIFEST
  done = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
  if done.get('key') != key:
    logging.info(
      'Labelling the typed cells of %d fields of %s with the initial model.',
      len(fields),
      config.data.fields_dir,
    )
    shutil.rmtree(out_dir, ignore_errors=True)  # this run's own folder: crops of other fields go
    manifest = write_field_crops(config, load_initial_variables(config), fields, out_dir)
    if not manifest['crops']:
      raise errors.DataError(
        f'{config.data.fields_dir}: the model finds no nucleus in any typed '
        f'box, so there is nothing to fine-tune on (is data.fields_scale '
        f'right?)'
      )
    files.write_json_atomic(manifest_path, {'key': key, **manifest})
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.datasets = ('folder',)
  config.data.folder_dir = str(out_dir)
  config.data.dataset_repeats = ()
  return config
